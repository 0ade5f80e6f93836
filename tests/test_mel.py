"""The log-mel front end: our FFT vs numpy, the filterbank/window vs librosa/scipy, and the C++
log-mel vs LogMel (eager and scripted) vs an independent numpy reference vs librosa."""
import io
import json
from dataclasses import replace

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

import pyssondo
from pyssondo import MelConfig, ParameterError, log_mel
from pyssondo import _core
from pyssondo.frontend import mel_filterbank, window
from pyssondo.frontend import LogMel
from pyssondo.frontend.torch_mel import DftLogMel

TOL = 1e-3  # max abs error on log-mel

CONFIGS = {
    "ssondo": MelConfig(),
    "htk-nonorm": MelConfig(mel_scale="htk", mel_norm="none", f_min=0.0),
    "center-reflect": MelConfig(center=True, pad_mode="reflect"),
    "center-constant-hamming": MelConfig(center=True, pad_mode="constant", window="hamming"),
    "power1": MelConfig(power=1.0),
    "16k-400-160": MelConfig(sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
                             n_mels=64, f_min=0.0, f_max=8000.0),
    "short-window": MelConfig(n_fft=1024, win_length=600, hop_length=320, n_mels=96),
    "odd-center-rect": MelConfig(sample_rate=22050, n_fft=511, win_length=500, hop_length=128,
                                 n_mels=40, f_max=11025.0, center=True, window="rectangular"),
}
SCIPY_WINDOWS = {"hann": "hann", "hamming": "hamming", "rectangular": "boxcar"}


def reference_log_mel(x, win, fb, hop, center, pad_mode, power, offset):
    """Independent numpy (float64) log-mel of one signal x [T]: np.pad, frames, np.fft.rfft."""
    x = np.asarray(x, dtype=np.float64)
    n = win.size
    if center:
        x = np.pad(x, (n // 2, n - n // 2), mode=pad_mode)
    elif x.size < n:
        x = np.pad(x, (0, n - x.size))
    frames = 1 + (x.size - n) // hop
    idx = np.arange(n)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * win, axis=-1)) ** power
    return np.log(np.asarray(fb, np.float64) @ spec.T + offset)


def independent_window(cfg):
    w = scipy.signal.get_window(SCIPY_WINDOWS[cfg.window], cfg.win_length, fftbins=True)
    return librosa.util.pad_center(w, size=cfg.n_fft)


def independent_filterbank(cfg):
    return librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                               fmin=cfg.f_min, fmax=cfg.f_max, htk=cfg.mel_scale == "htk",
                               norm="slaney" if cfg.mel_norm == "slaney" else None,
                               dtype=np.float64)


def reference_for(cfg, x):
    return reference_log_mel(x, independent_window(cfg), independent_filterbank(cfg),
                             cfg.hop_length, cfg.center, cfg.pad_mode, cfg.power, cfg.log_offset)


def signals(sr, seconds=0.6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return {
        "random": (0.1 * rng.standard_normal(t.size)).astype(np.float32),
        "silence": np.zeros(t.size, np.float32),
        "full-scale-noise": rng.uniform(-1, 1, t.size).astype(np.float32),
        "sweep": scipy.signal.chirp(t, 20, t[-1], sr / 2, method="logarithmic").astype(np.float32),
    }


@pytest.fixture(scope="module")
def scripted():
    return {name: torch.jit.script(LogMel(cfg)) for name, cfg in CONFIGS.items()}


# --------------------------------------------------------------------------------- FFT

@pytest.mark.parametrize("n", [*range(1, 34), 49, 64, 97, 100, 101, 128, 210, 257, 400, 401, 441, 512, 1000,
                               1009, 1024, 1536, 2048, 4096, 4099, 16384])
def test_rfft_matches_numpy(n):
    x = np.random.default_rng(n).standard_normal((11, n)).astype(np.float32)
    ref = np.fft.rfft(x.astype(np.float64), axis=-1)
    ours = _core.rfft(x)
    assert ours.shape == ref.shape and ours.dtype == np.complex64
    assert np.abs(ours - ref).max() <= 1e-5 * np.sqrt(n) * max(1.0, np.abs(ref).max() / n)


def test_rfft_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        _core.rfft(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        _core.rfft(np.zeros(8, np.float32))
    assert _core.rfft(np.zeros((0, 8), np.float32)).shape == (0, 5)


# ---------------------------------------------------------------- filterbank and window

@pytest.mark.parametrize("name", CONFIGS)
def test_filterbank_matches_librosa(name):
    cfg = CONFIGS[name]
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, independent_filterbank(cfg), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", CONFIGS)
def test_window_matches_scipy_and_torch_stft_padding(name):
    cfg = CONFIGS[name]
    w = window(cfg)
    assert w.shape == (cfg.n_fft,) and w.dtype == np.float32
    np.testing.assert_allclose(w, independent_window(cfg), atol=1e-7)
    if cfg.window == "hann":
        # torch.stft zero-pads a short window on both sides the same way.
        x = torch.randn(1, 3 * cfg.n_fft, dtype=torch.float64)
        a = torch.stft(x, cfg.n_fft, cfg.hop_length, win_length=cfg.win_length,
                       window=torch.hann_window(cfg.win_length, dtype=torch.float64),
                       center=False, return_complex=True)
        b = torch.stft(x, cfg.n_fft, cfg.hop_length, window=torch.from_numpy(w).double(),
                       center=False, return_complex=True)
        assert (a - b).abs().max() < 1e-5


# ------------------------------------------------------------------------------ log-mel

@pytest.mark.parametrize("name", CONFIGS)
def test_cpp_torch_numpy_and_librosa_agree(name, scripted):
    cfg = CONFIGS[name]
    eager = LogMel(cfg)
    for kind, x in signals(cfg.sample_rate).items():
        ref = reference_for(cfg, x)
        ours = log_mel(x, cfg)
        with torch.no_grad():
            e = eager(torch.from_numpy(x)[None])[0].numpy()
            s = scripted[name](torch.from_numpy(x)[None])[0].numpy()
        assert ours.shape == e.shape == s.shape == ref.shape == (cfg.n_mels, cfg.num_frames(x.size))
        for what, got in (("C++", ours), ("eager", e), ("scripted", s)):
            err = np.abs(got - ref).max()
            assert err <= TOL, f"{name}/{kind}: {what} vs numpy max err {err:.2e}"
        if cfg.n_fft % 2 == 0:  # librosa centres odd n_fft differently (1 + (T - 1) // hop)
            lib = librosa.feature.melspectrogram(
                y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft,
                hop_length=cfg.hop_length, win_length=cfg.win_length,
                window=SCIPY_WINDOWS[cfg.window], center=cfg.center, pad_mode=cfg.pad_mode,
                power=cfg.power, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
                htk=cfg.mel_scale == "htk", norm="slaney" if cfg.mel_norm == "slaney" else None)
            err = np.abs(np.log(lib + cfg.log_offset) - ours).max()
            assert err <= TOL, f"{name}/{kind}: C++ vs librosa max err {err:.2e}"


def test_log_is_accurate_over_the_whole_float_range():
    """n_fft = 1, hop 1, weight 1: each sample x gives log(x^2 + offset), so the vectorised log
    is checked alone against float64 numpy over energies from subnormal (2^-149) to 2^126, at a
    tolerance of a couple of float32 ulp (the log-mel tests above allow 1e-3)."""
    offset = float(np.finfo(np.float32).smallest_subnormal)  # 2^-149
    plan = _core.LogMelPlan(np.ones(1, np.float32), np.ones((1, 1), np.float32), 1, False,
                            "constant", 2, offset)
    # x = 2^k (1 + j/64): x^2 has at most 14 significant bits, so float32 holds it exactly
    # (k >= -68 keeps it above 2^-136); zero gives log(offset) through the subnormal path.
    k, j = np.meshgrid(np.arange(-68, 63), np.arange(64), indexing="ij")
    x = np.ldexp(1.0 + j.ravel() / 64.0, k.ravel()) * np.where(j.ravel() % 2, -1.0, 1.0)
    x = np.concatenate([x, [0.0, np.inf, np.nan]]).astype(np.float32)
    ours = plan(x[None])[0, 0]
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.log(x.astype(np.float64) ** 2 + offset)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert ours[-3] == np.float32(np.log(offset)) and ours[-2] == np.inf and np.isnan(ours[-1])
    err = np.abs(ours[:-3] - ref[:-3])
    assert (err <= 1.2e-7 + 2.5e-7 * np.abs(ref[:-3])).all(), err.max()


@pytest.mark.parametrize("name", CONFIGS)
def test_short_signals_are_padded_to_one_frame_the_same_way(name, scripted):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(7)
    for t in (1, 2, 3, cfg.n_fft // 2, cfg.n_fft - 1, cfg.n_fft, cfg.n_fft + 1):
        x = (0.5 * rng.standard_normal(t)).astype(np.float32)
        ours = log_mel(x, cfg)
        with torch.no_grad():
            s = scripted[name](torch.from_numpy(x)[None])[0].numpy()
        ref = reference_for(cfg, x)
        assert ours.shape == s.shape == ref.shape == (cfg.n_mels, cfg.num_frames(t))
        assert np.abs(ours - ref).max() <= TOL and np.abs(s - ref).max() <= TOL, t


def test_batch_equals_rows_and_threads_do_not_change_results():
    cfg = MelConfig()
    x = (0.1 * np.random.default_rng(3).standard_normal((5, 20000))).astype(np.float32)
    before = pyssondo.get_num_threads()
    try:
        pyssondo.set_num_threads(1)
        one = log_mel(x, cfg)
        pyssondo.set_num_threads(3)
        three = log_mel(x, cfg)
    finally:
        pyssondo.set_num_threads(before)
    np.testing.assert_array_equal(one, three)
    assert one.shape == (5, 128, cfg.num_frames(20000)) and one.dtype == np.float32
    np.testing.assert_array_equal(one[3], log_mel(x[3], cfg))
    # float64 and non-contiguous input are converted explicitly
    np.testing.assert_allclose(log_mel(x.astype(np.float64)[:, ::1], cfg), one, atol=1e-6)
    np.testing.assert_allclose(log_mel(np.asfortranarray(x), cfg), one, atol=0)
    assert log_mel(np.zeros((0, 2000), np.float32), cfg).shape == (0, 128, cfg.num_frames(2000))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_band_blocks_cover_every_filter(name):
    """The banded product (band_blocks) equals numpy's dense fb @ power on random power, and
    every non-zero filter entry lies inside its group's bin range."""
    from pyssondo.frontend.torch_mel import band_blocks

    fb = mel_filterbank(CONFIGS[name]).astype(np.float64)
    blocks = band_blocks(fb)
    inside = np.zeros(fb.shape, bool)
    for r0, r1, c0, c1 in blocks:
        inside[r0:r1, c0:c1] = True
    assert [b[0] for b in blocks] == list(range(0, fb.shape[0], 16)) and blocks[-1][1] == fb.shape[0]
    assert not fb[~inside].any() and inside.sum() < fb.size / 2
    power = np.random.default_rng(0).random((fb.shape[1], 7))
    banded = np.concatenate([fb[r0:r1, c0:c1] @ power[c0:c1] for r0, r1, c0, c1 in blocks])
    np.testing.assert_allclose(banded, fb @ power, rtol=1e-12)


def test_logmel_module_interface():
    cfg = CONFIGS["center-reflect"]
    m = LogMel(cfg)
    assert MelConfig.from_json(m.cfg_json) == cfg
    assert json.loads(torch.jit.script(m).cfg_json) == cfg.to_dict()
    assert set(dict(m.named_buffers())) == {"window", "filterbank_slots", "filterbank_values"}
    # the filterbank is stored as its non-zero entries and rebuilt exactly, block by block:
    # each block is its bands' filters over its bins, transposed; with two terms per bin (a
    # bin's squared real and imaginary parts) each bin's row repeats
    dense = mel_filterbank(cfg)
    assert m.filterbank_values.numel() == 2 * np.count_nonzero(dense) < dense.size // 20
    for module, per_bin in ((m, 2), (LogMel(replace(cfg, power=1.0)), 1), (DftLogMel(cfg), 1)):
        wide = np.repeat(dense, per_bin, axis=1)
        blocks = module.filterbank_blocks()
        assert len(blocks) == len(module.bands) == 8
        for (r0, r1, c0, c1), block in zip(module.bands, blocks):
            np.testing.assert_array_equal(block.numpy(), wide[r0:r1, per_bin * c0:per_bin * c1].T)
        assert sum(np.count_nonzero(b.numpy()) for b in blocks) == np.count_nonzero(wide)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(m), buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(2, 5000)
    assert loaded.cfg_json == m.cfg_json
    torch.testing.assert_close(loaded(x), m(x))
    with pytest.raises(Exception, match=r"\[B, T\]"):
        m(torch.zeros(100))
    with pytest.raises(Exception, match=r"\[B, T\]"):
        torch.jit.script(m)(torch.zeros(2, 0))


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 0), np.float32),
                                 np.zeros((1, 2, 3), np.float32), np.zeros(100, np.int16),
                                 np.zeros(100, np.complex64), np.float32(1.0)])
def test_log_mel_rejects_bad_input(bad):
    with pytest.raises(ParameterError):
        log_mel(bad)


def plan(n_fft=16, hop=4, n_mels=3, center=False, pad_mode="reflect", power=2, offset=1e-3,
         window_=None, fb=None):
    w = np.hanning(n_fft).astype(np.float32) if window_ is None else window_
    f = np.ones((n_mels, n_fft // 2 + 1), np.float32) if fb is None else fb
    return _core.LogMelPlan(w, f, hop, center, pad_mode, power, offset)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hop=0), "hop_length"), (dict(hop=-3), "hop_length"), (dict(power=3), "power"),
    (dict(offset=0.0), "log_offset"), (dict(offset=float("nan")), "log_offset"),
    (dict(pad_mode="edge"), "pad_mode"), (dict(window_=np.zeros(0, np.float32)), "n_fft"),
    (dict(fb=np.ones((3, 8), np.float32)), "filterbank"),
    (dict(fb=-np.ones((3, 9), np.float32)), "filterbank"),
    (dict(fb=np.full((3, 9), np.nan, np.float32)), "filterbank"),
    (dict(window_=np.full(16, np.inf, np.float32)), "window"),
])
def test_core_rejects_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_core_rejects_absurd_sizes_and_config_validates():
    with pytest.raises(ValueError, match="n_fft"):
        n = (1 << 20) + 2
        plan(n_fft=n, window_=np.zeros(n, np.float32), fb=np.zeros((1, n // 2 + 1), np.float32))
    with pytest.raises(ValueError, match="0 samples"):
        plan()(np.zeros((1, 0), np.float32))
    with pytest.raises(ParameterError, match="f_max"):
        MelConfig(f_max=20000.0)
    with pytest.raises(ParameterError, match="n_fft"):
        MelConfig(n_fft=0)
    with pytest.raises(ParameterError, match="hop_length"):
        MelConfig(hop_length=0)


def test_fuzz_random_shapes_and_configs_give_value_error_or_the_reference():
    rng = np.random.default_rng(12345)
    for _ in range(150):
        n_fft = int(rng.integers(1, 300))
        hop = int(rng.integers(-1, 320))
        n_mels = int(rng.integers(1, 12))
        center = bool(rng.integers(2))
        pad_mode = ["reflect", "constant"][int(rng.integers(2))]
        power = int(rng.choice([1, 2, 2, 3]))
        batch = int(rng.integers(0, 4))
        t = int(rng.integers(0, 700))
        nb = n_fft // 2 + 1 + int(rng.choice([0, 0, 0, 1]))  # sometimes a wrong shape
        w = rng.uniform(0, 1, n_fft).astype(np.float32)
        fb = (rng.uniform(0, 1, (n_mels, nb)) * (rng.uniform(size=(n_mels, nb)) < 0.3))
        fb = fb.astype(np.float32)
        x = rng.standard_normal((batch, t)).astype(np.float32)
        try:
            p = _core.LogMelPlan(w, fb, hop, center, pad_mode, power, 1e-3)
            out = p(x)
        except ValueError:
            assert hop < 1 or power == 3 or nb != n_fft // 2 + 1 or t == 0
            continue
        assert out.shape == (batch, n_mels, p.num_frames(t))
        for b in range(batch):
            ref = reference_log_mel(x[b], w.astype(np.float64), fb, hop, center, pad_mode,
                                    power, 1e-3)
            assert np.abs(out[b] - ref).max() <= TOL, (n_fft, hop, center, pad_mode, power, t)
