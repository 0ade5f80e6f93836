"""The exported student: any input length, per-window embeddings, scripted == eager, metadata,
int8, and `ssondo embed` on the export."""
from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from pyssondo.frontend import MelConfig
from pyssondo.export import ExportedStudent, quantize_student, save_export, wrap
from pyssondo.frontend import LogMel
from pyssondo.heads import make_head
from pyssondo.loading import load_model
from pyssondo.quantize import ChannelsLast
from pyssondo.students import create_student

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)
WINDOW_S = 1.0  # 16000 samples: small, so 25 s is 25 windows but still fast


@pytest.fixture(scope="module")
def module() -> ExportedStudent:
    torch.manual_seed(0)
    student = create_student("mn01", n_mels=MEL.n_mels)
    head = make_head("mlp", int(student.embed_dim), 32)
    # Non-trivial batch-norm statistics, so eval mode differs from an identity.
    student.train()
    with torch.no_grad():
        student(torch.randn(8, MEL.n_mels, 30))
    return wrap(student, head, MEL, WINDOW_S)


@pytest.fixture(scope="module")
def scripted(module):
    return torch.jit.script(module)


def reference(module: ExportedStudent, wav: torch.Tensor) -> torch.Tensor:
    """Independent reference: cut windows with numpy-style slicing, embed each through the
    eager parts one by one, average weighted by real samples."""
    w, t = module.window, wav.shape[1]
    embs, weights = [], []
    for start in range(0, t, w):
        piece = torch.zeros(wav.shape[0], w)
        real = wav[:, start:start + w]
        piece[:, :real.shape[1]] = real
        embs.append(module.head(module.backbone(LogMel(MEL)(piece))))
        weights.append(real.shape[1] / t)
    return sum(e * wt for e, wt in zip(embs, weights))


@pytest.mark.parametrize("seconds", [1 / 16000, 300 / 16000, 10.0, 25.0])
def test_any_length_matches_reference_and_script(module, scripted, seconds):
    t = max(1, int(round(seconds * 16000)))
    wav = 0.1 * torch.randn(2, t, generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        eager, ref, script_out = module(wav), reference(module, wav), scripted(wav)
    assert eager.shape == (2, 32)
    assert torch.allclose(eager, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(script_out, eager, atol=1e-5, rtol=1e-4)
    segs = scripted.segments(wav)
    assert segs.shape == (2, -(-t // module.window), 32)


def test_segments_are_per_window_embeddings(module):
    wav = 0.1 * torch.randn(1, int(2.5 * module.window), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        segs = module.segments(wav)
        second = module.head(module.backbone(LogMel(MEL)(wav[:, module.window:2 * module.window])))
    assert segs.shape == (1, 3, 32)
    assert torch.allclose(segs[:, 1], second, atol=1e-5)


def test_empty_input_is_an_error(scripted):
    with pytest.raises(Exception, match="at least one sample"):
        scripted(torch.zeros(1, 0))


def test_save_reload_metadata_and_embed_cli(module, tmp_path):
    out = tmp_path / "student.pt"
    report = save_export(module, out, {"teacher": {"name": "x"}, "projected": True},
                         measure=False)
    assert report.max_rel_diff <= 1e-4
    loaded = load_model(out, role="student")
    assert loaded.sample_rate == 16000 and loaded.meta["embed_dim"] == 32
    assert loaded.meta["format"] == "ssondo-student" and loaded.meta["segment_samples"] == 16000
    # `ssondo embed` in a fresh process equals the module on the same audio.
    rng = np.random.default_rng(0)
    files = []
    for i, seconds in enumerate((0.5, 2.3)):
        path = tmp_path / f"a{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000,
                 subtype="FLOAT")
        files.append(path)
    with torch.no_grad():
        want = np.stack([module(torch.from_numpy(sf.read(f, dtype="float32")[0])[None])[0].numpy()
                         for f in files])
    # 1 + 3 windows: one call of 4 windows by default; with --batch 3, two calls of 3 windows
    # (the second padded), the first file's windows sharing a call with the second file's.
    for batch in ("16", "3"):
        emb = tmp_path / f"emb{batch}.npy"
        proc = subprocess.run([sys.executable, "-m", "pyssondo", "embed", str(out),
                               *map(str, files), "-o", str(emb), "-v", "--threads", "1",
                               "--batch", batch], capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert [line.split(":")[0] for line in lines[:2]] == list(map(str, files))
        assert f"{batch} windows per call" in lines[2]
        got = np.load(emb)
        assert got.shape == (2, 32)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_int8_reports_size_and_cosine(module, tmp_path, shared_data):
    from pyssondo.calibration import from_audio_dir

    calibration = from_audio_dir(shared_data / "notes", 16000, module.window, n=8)
    assert calibration.waveforms.shape == (8, module.window)
    report = save_export(module, tmp_path / "int8.pt", {}, int8=calibration, measure=False)
    assert report.meta.int8 is True
    check = report.meta.int8_check  # the untrained student needs no float32 front
    assert check["float_front"] == 0 and check["float_units"] == []
    assert check["agreement"] >= check["threshold"] and check["windows"] == 4
    # Convolutions and linears are int8: well under half the float32 file.
    assert report.size_bytes < 0.5 * report.int8["fp32_size_bytes"]
    assert 0.9 < report.int8["cosine_to_fp32"] <= 1.0 + 1e-6
    # Every convolution and linear of the backbone and head became a quantised module.
    quantized = quantize_student(module, calibration)
    kinds = {type(m) for part in (quantized.backbone, quantized.head) for m in part.modules()}
    assert not kinds & {torch.nn.Conv2d, torch.nn.Linear}, kinds
    assert any("quantized" in k.__module__ for k in kinds)
    # The report states the latency ratio, and says so when int8 is not the faster file.
    from dataclasses import replace

    from pyssondo.export import format_report

    timed = {**report.int8, "fp32_latency_ms": 4.0}
    fast = format_report(replace(report, latency_ms=3.0, int8=timed))
    slow = format_report(replace(report, latency_ms=5.0, int8=timed))
    assert "(0.75x)" in fast and "not faster" not in fast
    assert "(1.25x)" in slow and "int8 is not faster than float32" in slow


@pytest.mark.parametrize("name", ["micronet-m0", "mobilevitv2-050"])
def test_new_families_export(name, tmp_path, shared_data, one_thread):
    """The contract above for the hearables students, projected through the head: 2.5 windows
    and 1 sample against the reference, segments, and (MicroNet) the int8 export checked on
    reload."""
    torch.manual_seed(0)
    student = create_student(name, n_mels=MEL.n_mels)
    student.train()
    with torch.no_grad():
        student(torch.randn(8, MEL.n_mels, 30))
    module = wrap(student, make_head("mlp", int(student.embed_dim), 32), MEL, WINDOW_S)
    scripted = torch.jit.script(module)
    for t in (1, int(2.5 * module.window)):
        wav = 0.1 * torch.randn(2, t, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            eager = module(wav)
            torch.testing.assert_close(eager, reference(module, wav), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(scripted(wav), eager, atol=1e-5, rtol=1e-4)
            assert scripted.segments(wav).shape == (2, -(-t // module.window), 32)
    if name.startswith("mobilevitv2"):
        return  # static int8 of MobileViT v2 (attention, GroupNorm) is refused: cosine < 0.9
    from pyssondo.calibration import from_audio_dir

    calibration = from_audio_dir(shared_data / "notes", MEL.sample_rate, module.window, n=8)
    report = save_export(module, tmp_path / "int8.pt", {}, int8=calibration, measure=False)
    assert report.int8["fp32_size_bytes"] > report.size_bytes
    assert 0.9 < report.int8["cosine_to_fp32"] <= 1.0 + 1e-6
    assert load_model(report.path, role="student").meta["embed_dim"] == 32


@pytest.mark.parametrize("float_front", [0, 1, 3])
def test_int8_eres2net_whose_children_are_not_sequential(float_front, shared_data, one_thread):
    """ERes2Net traces child by child (stem conv, its batch norm, ..., stages): with 0, 1 or 3
    leading units float32 every other convolution is quantised behind a channels-last step,
    the scripted student stays close to float32 (raw cosine; random weights), and its Res2Net
    branches are concatenated in float32 (a quantised cat of inputs with different ranges
    clips them to the first one's and warns on every call)."""
    from pyssondo.calibration import from_audio_dir

    torch.manual_seed(0)
    student = create_student("eres2net16", n_mels=MEL.n_mels)
    student.train()
    with torch.no_grad():
        student(torch.randn(8, MEL.n_mels, 30))
    module = wrap(student, None, MEL, WINDOW_S)
    calibration = from_audio_dir(shared_data / "notes", MEL.sample_rate, module.window, n=8)
    kept = []
    q = quantize_student(module, calibration, float_front=float_front, kept=kept)
    assert len(kept) == float_front
    convs = [m for m in q.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for name in kept
                             for m in module.get_submodule(name).modules())
    assert sum(isinstance(m, ChannelsLast) for m in q.modules()) >= 1
    wav = torch.from_numpy(calibration.waveforms[:4])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cos = torch.nn.functional.cosine_similarity(torch.jit.script(q)(wav), module(wav))
    assert float(cos.min()) > 0.9, cos
    assert not [w for w in caught if "cat operator" in str(w.message)]


def test_embed_rejects_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "embed", "nope.pt", "x.wav", "-o",
                           str(tmp_path / "e.npy")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "x.wav" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e.npy").exists()


def test_float_front_keeps_the_first_blocks_float(module, shared_data):
    from pyssondo.calibration import from_audio_dir

    calibration = from_audio_dir(shared_data / "notes", 16000, module.window, n=4)
    kept = []
    q = quantize_student(module, calibration, float_front=3, kept=kept)
    assert kept == ["backbone.features.0", "backbone.features.1", "backbone.features.2"]
    features = q.backbone.features  # 3 float32 blocks, channels-last, one quantised graph

    def kinds(m):
        return {type(x) for x in m.modules()}

    assert all(torch.nn.Conv2d in kinds(features[i]) for i in range(3))
    assert isinstance(features[3], ChannelsLast) and len(features) == 5
    assert torch.nn.Conv2d not in kinds(features[4])
    assert any("quantized" in k.__module__ for k in kinds(features[4]))
    wav = torch.from_numpy(calibration.waveforms[:2])
    with torch.no_grad():  # still the same function, to rounding
        cos = torch.nn.functional.cosine_similarity(torch.jit.script(q)(wav), module(wav))
    assert float(cos.min()) > 0.99


def test_compact_weights_reload_every_weight_exactly_in_a_smaller_file(module, shared_data):
    """The int8 export's weights saved as int8 values and float32 scales: every reloaded weight
    equals the eager int8 model's (values, scales, zero points, bias), so do the embeddings,
    and the file saves at least 12 of torch's 16 bytes per output channel (a float64 scale and
    an int64 zero point) of every quantised conv and linear; weights whose zero points are not
    all 0 keep torch's own class."""
    import io

    from torch.ao.nn.quantized.modules.conv import _ConvNd
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    from pyssondo.calibration import from_audio_dir
    from pyssondo.quantize import with_compact_weights

    def weighted(model):  # torch's holders of int8 weights, by name
        return {n: m for n, m in model.named_modules()
                if isinstance(m, (_ConvNd, LinearPackedParams))}

    calibration = from_audio_dir(shared_data / "notes", 16000, module.window, n=4)
    q = quantize_student(module, calibration)
    compact = with_compact_weights(q)
    assert weighted(q).keys() == weighted(compact).keys() and len(weighted(q)) > 10
    assert all(type(m).__name__.startswith("Compact") for m in weighted(compact).values())
    assert not any(type(m).__name__.startswith("Compact") for m in q.modules())  # a copy

    def saved(m) -> bytes:
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(m), buf)
        return buf.getvalue()

    plain, small = saved(q), saved(compact)
    channels = sum(m._weight_bias()[0].shape[0] for m in weighted(q).values())
    assert len(plain) - len(small) >= 12 * channels, (len(plain), len(small), channels)
    loaded = torch.jit.load(io.BytesIO(small))
    reloaded = dict(loaded.named_modules())
    for name, m in weighted(q).items():
        (w, b), (w2, b2) = m._weight_bias(), reloaded[name]._weight_bias()
        assert torch.equal(w.int_repr(), w2.int_repr()), name
        assert torch.equal(w.q_per_channel_scales(), w2.q_per_channel_scales()), name
        assert not w2.q_per_channel_zero_points().any(), name
        assert torch.equal(b, b2), name
    wav = torch.from_numpy(calibration.waveforms[:3])
    with torch.no_grad():
        assert torch.equal(loaded(wav), q(wav))

    conv = next(m for m in weighted(q).values() if type(m).__name__ == "Conv2d")
    w, b = conv._weight_bias()
    shifted = torch._make_per_channel_quantized_tensor(  # zero points 1: not held compactly
        w.int_repr(), w.q_per_channel_scales(), torch.ones(w.shape[0], dtype=torch.long), 0)
    conv.set_weight_bias(shifted, b)
    assert type(with_compact_weights(conv)) is type(conv)


def test_channels_last_step_keeps_values_and_only_moves_feature_maps():
    step = torch.jit.script(ChannelsLast())
    maps = torch.randn(2, 8, 5, 7)
    moved = step(maps)
    assert moved.is_contiguous(memory_format=torch.channels_last)
    assert not maps.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved, maps)
    frames = torch.randn(2, 8, 5)
    assert step(frames).data_ptr() == frames.data_ptr()


def test_cat_on_common_range_keeps_every_input_range():
    """Two uint8 maps with their own ranges ([0, 2.55] and [-5.12, 5.08]): the result holds both
    within one step of the common range (torch's quantised cat clips the second to the first's
    range); equal ranges and float tensors are a plain cat."""
    from pyssondo.quantize import cat_on_common_range

    g = torch.Generator().manual_seed(0)
    a_f, b_f = torch.rand(2, 3, 4, generator=g) * 2.5, torch.randn(2, 5, 4, generator=g) * 2
    a = torch.quantize_per_tensor(a_f, 0.01, 0, torch.quint8)
    b = torch.quantize_per_tensor(b_f.clamp(-5.1, 5.1), 0.04, 128, torch.quint8)
    got = torch.jit.script(cat_on_common_range)([a, b], 1)
    want = torch.cat([a.dequantize(), b.dequantize()], 1)
    step = (5.12 + 5.08) / 255  # the union of [0, 2.55] and [-5.12, 5.08]
    assert got.q_scale() == pytest.approx(step, rel=1e-3)
    assert float((got.dequantize() - want).abs().max()) <= step / 2 + 1e-6
    assert float(want.abs().max()) > 2.6  # the first input's range would have clipped this
    same = torch.quantize_per_tensor(b_f, 0.04, 128, torch.quint8)
    assert torch.equal(cat_on_common_range([b, same], 0).int_repr(),
                       torch.cat([b, same], 0).int_repr())
    assert torch.equal(cat_on_common_range([a_f, b_f], 1), torch.cat([a_f, b_f], 1))


def test_fast_histogram_observer_finds_torchs_ranges():
    """FastHistogramObserver against torch's HistogramObserver fed the same batches: the same
    scale and zero point, bit for bit, on ordinary activations and on degenerate ones (one
    value, two values, a handful of samples), where torch's search walks all its 100,000
    steps."""
    from torch.ao.quantization.observer import HistogramObserver

    from pyssondo.quantize import FastHistogramObserver

    g = torch.Generator().manual_seed(0)
    cases = [torch.relu(torch.randn(20000, generator=g)), torch.randn(30000, generator=g) ** 3,
             torch.log(torch.rand(40000, generator=g) ** 4 + 1e-3),
             torch.exp(5 * torch.randn(20000, generator=g)), torch.randn(64, generator=g),
             torch.rand(7, generator=g), torch.ones(100), torch.zeros(1000),
             torch.cat([torch.zeros(10000), torch.ones(3)]),
             torch.cat([torch.full((5000,), -2.0), torch.full((5000,), 3.0)])]
    for _ in range(20):
        n, scale, shift = int(torch.randint(1, 5000, (1,), generator=g)), 10 * float(
            torch.rand(1, generator=g)), float(torch.randn(1, generator=g))
        cases += [torch.randn(n, generator=g) * scale + shift,
                  torch.relu(torch.randn(n, generator=g)) ** (4 * scale / 10)]
    for data in cases:
        want, got = HistogramObserver(reduce_range=False), FastHistogramObserver(reduce_range=False)
        for batch in data.split(3000):
            want(batch)
            got(batch)
        (want_scale, want_zero), (scale, zero) = want.calculate_qparams(), got.calculate_qparams()
        assert torch.equal(scale, want_scale) and torch.equal(zero, want_zero), data[:4]


def test_latency_times_only_calls_after_two_warm_ups():
    """TorchScript optimises a graph on its second call (mn04: 157, 93, then 11 ms): the
    median must come from the calls after it."""
    from pyssondo.export import latency_ms

    calls = []

    def model(wav):
        calls.append(wav.shape)
        if len(calls) <= 2:
            time.sleep(0.2)
        return wav

    assert latency_ms(model, 1000, seconds=0.01, repeats=3) < 100
    assert calls == [(1, 10)] * 5


def test_latencies_take_turns_and_keep_each_best_round():
    """Models are measured in turns, in alternating order, and each keeps its fastest round:
    a slow spell in round 1 (model "a" 80 ms a call after its warm-ups) does not count
    against it."""
    from pyssondo.export import latencies_ms

    order, spell = [], {"a": [0.0, 0.08, 0.0]}

    def timed(name):
        calls = []

        def model(wav):
            calls.append(1)
            if (len(calls) - 1) % 5 == 0:  # the first warm-up call of each round
                order.append(name)
            rnd = (len(calls) - 1) // 5
            if (len(calls) - 1) % 5 >= 2:  # timed calls only
                time.sleep(spell.get(name, [0.02] * 3)[rnd])
            return wav
        return model

    got = latencies_ms({"a": timed("a"), "b": timed("b")}, 1000, rounds=3, repeats=3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert got["a"] < 10 and 20 <= got["b"] < 40, got


def test_agreement_is_the_centred_cosine():
    from pyssondo.export import MIN_SPREAD, agreement

    g = torch.Generator().manual_seed(0)
    want = torch.randn(6, 5, generator=g) + 3.0
    got = want + 0.3 * torch.randn(6, 5, generator=g)
    w, x = want.numpy().astype(np.float64), got.numpy().astype(np.float64)
    mu = w.mean(0)
    a, b = x - mu, w - mu
    ref = np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    assert abs(agreement(got, want) - ref) < 1e-6
    # Rows that barely differ (an untrained student) are compared uncentred.
    flat = 100.0 + 1e-3 * MIN_SPREAD * torch.randn(6, 5, generator=g)
    noisy = flat + 1e-3 * torch.randn(6, 5, generator=g)
    raw = float(torch.nn.functional.cosine_similarity(noisy, flat, dim=-1).mean())
    assert agreement(noisy, flat) == pytest.approx(raw, abs=1e-6)


def test_int8_is_refused_below_the_bar_and_written_above_it(module, tmp_path, shared_data):
    """No rung of the float32-front ladder reaching ``min_agreement`` is Int8Refused (a
    ValueError, so ``ssondo export`` prints one line) naming each rung's agreement, and nothing
    is written; ``min_agreement=0`` (bench/export.py measures random students so) takes every
    block int8 and records the bar it met."""
    from pyssondo.calibration import from_audio_dir
    from pyssondo.errors import Int8Refused
    from pyssondo.export import FLOAT_FRONT_LADDER

    calibration = from_audio_dir(shared_data / "notes", 16000, module.window, n=8)
    out = tmp_path / "int8.pt"
    with pytest.raises(Int8Refused, match=r"agree with float32 at most .* nothing was written") \
            as refused:
        save_export(module, out, {}, int8=calibration, measure=False, min_agreement=1.01)
    assert isinstance(refused.value, ValueError) and not out.exists()
    assert all(f"{k} float front units" in str(refused.value) for k in (0, 1, 2, 4, 8))
    report = save_export(module, out, {}, int8=calibration, measure=False, min_agreement=0.0)
    check = report.meta.int8_check
    assert check["float_front"] == FLOAT_FRONT_LADDER[0] == 0 and check["threshold"] == 0.0
    assert out.is_file()
