"""The C++ resampler vs scipy.signal.resample_poly, and its stop band measured on sines/noise."""
from math import gcd

import numpy as np
import pytest
import scipy.signal

from pyssondo import ParameterError, resample
from pyssondo import _core

RATIOS = [(8000, 32000), (16000, 32000), (44100, 32000), (48000, 16000), (32000, 44100)]


def reference_filter(up: int, down: int) -> np.ndarray:
    """The filter csrc/resample.hpp documents, built independently with numpy (sum 1)."""
    stop_db, transition = 90.0, 0.08
    r = max(up, down)
    beta = 0.1102 * (stop_db - 8.7)
    half = int(np.ceil((stop_db - 7.95) * r / (2 * 2.285 * np.pi * transition)))
    j = np.arange(2 * half + 1) - half
    h = np.sinc((1 - transition / 2) * j / r) * np.kaiser(2 * half + 1, beta)
    return h / h.sum()


def factors(sr_in: int, sr_out: int):
    g = gcd(sr_in, sr_out)
    return sr_out // g, sr_in // g


def rms_db(x: np.ndarray, ref_rms: float) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) / ref_rms + 1e-30)


@pytest.mark.parametrize("sr_in,sr_out", RATIOS)
@pytest.mark.parametrize("length", [1, 2, 3, 7, 100, 1001, 4801])
def test_matches_resample_poly_with_the_same_filter_on_noise(sr_in, sr_out, length):
    up, down = factors(sr_in, sr_out)
    x = np.random.default_rng(length).standard_normal((2, length)).astype(np.float32)
    ours = resample(x, sr_in, sr_out)
    ref = scipy.signal.resample_poly(x.astype(np.float64), up, down, axis=-1,
                                     window=reference_filter(up, down))
    assert ours.shape == ref.shape == (2, -(-length * sr_out // sr_in))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("sr_in,sr_out", RATIOS)
def test_in_band_sines_match_default_resample_poly_and_the_exact_sine(sr_in, sr_out):
    up, down = factors(sr_in, sr_out)
    nyq = min(sr_in, sr_out) / 2
    t_in = np.arange(sr_in) / sr_in
    for f in (50.0, 0.3 * nyq, 0.6 * nyq, 0.9 * nyq):
        x = np.sin(2 * np.pi * f * t_in).astype(np.float32)
        ours = resample(x, sr_in, sr_out)
        exact = np.sin(2 * np.pi * f * np.arange(ours.size) / sr_out)
        inner = slice(ours.size // 4, 3 * ours.size // 4)  # away from the zero-padded edges
        # Pass band: the error against the exact sine is below -80 dB.
        assert rms_db(ours[inner] - exact[inner], np.sqrt(0.5)) < -80, f
        if f <= 0.6 * nyq:  # inside resample_poly's (shorter, beta 5) filter's pass band too
            ref = scipy.signal.resample_poly(x.astype(np.float64), up, down)
            assert ref.shape == ours.shape
            np.testing.assert_allclose(ours[inner], ref[inner], atol=5e-3)


@pytest.mark.parametrize("sr_in,sr_out", [(48000, 16000), (44100, 32000), (32000, 8000)])
def test_stop_band_attenuation_is_at_least_80_db_for_sines_above_the_new_nyquist(sr_in, sr_out):
    t_in = np.arange(sr_in) / sr_in
    for f in np.linspace(sr_out / 2, 0.99 * sr_in / 2, 9):
        x = np.sin(2 * np.pi * f * t_in).astype(np.float32)
        y = resample(x, sr_in, sr_out)
        inner = y[y.size // 4: 3 * y.size // 4]
        assert rms_db(inner, np.sqrt(0.5)) < -80, f"{f:.0f} Hz leaks"


@pytest.mark.parametrize("sr_in,sr_out", [(8000, 32000), (16000, 32000)])
def test_upsampled_white_noise_has_no_images_above_the_old_nyquist(sr_in, sr_out):
    x = np.random.default_rng(0).standard_normal(4 * sr_in).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    f, psd = scipy.signal.welch(y, fs=sr_out, window="blackmanharris", nperseg=4096)
    nyq = sr_in / 2
    in_band = psd[f < 0.9 * nyq].mean()
    images = psd[f > 1.05 * nyq].mean()  # one analysis-window main lobe above the edge
    assert 10 * np.log10(images / in_band) < -80


def test_shapes_batches_and_empty_inputs():
    assert resample(np.zeros(0, np.float32), 16000, 32000).shape == (0,)
    assert resample(np.zeros((3, 0), np.float32), 16000, 32000).shape == (3, 0)
    assert _core.resample(np.zeros((0, 5), np.float32), 16000, 32000).shape == (0, 10)
    x = np.random.default_rng(1).standard_normal((2, 3, 1000))
    y = resample(x, 48000, 16000)
    assert y.shape == (2, 3, 334) and y.dtype == np.float32
    np.testing.assert_allclose(y[1, 2], resample(x[1, 2], 48000, 16000), atol=1e-7)
    np.testing.assert_array_equal(resample(x[0], 16000, 16000), x[0].astype(np.float32))
    # A constant stays constant away from the edges (unit DC gain of every phase).
    y = resample(np.ones(8000, np.float32), 8000, 44100)
    np.testing.assert_allclose(y[2000:-2000], 1.0, atol=1e-4)


def test_threads_give_identical_results():
    import pyssondo

    x = np.random.default_rng(2).standard_normal((3, 30000)).astype(np.float32)
    before = pyssondo.get_num_threads()
    try:
        pyssondo.set_num_threads(1)
        one = resample(x, 44100, 32000)
        pyssondo.set_num_threads(3)
        three = resample(x, 44100, 32000)
    finally:
        pyssondo.set_num_threads(before)
    np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("sr_in,sr_out", [(0, 16000), (16000, -1), (16000.0, 8000), (1, 10**6)])
def test_bad_rates_raise_value_error(sr_in, sr_out):
    with pytest.raises(ValueError, match="sr_|resample"):
        resample(np.zeros(10, np.float32), sr_in, sr_out)


def test_core_rejects_bad_arrays_and_rates():
    with pytest.raises(ValueError, match="2-D"):
        _core.resample(np.zeros(10, np.float32), 1, 2)
    with pytest.raises(ValueError, match="sr_in"):
        _core.resample(np.zeros((1, 10), np.float32), 0, 2)
    with pytest.raises(ValueError, match="must be <= 65536"):
        _core.resample(np.zeros((1, 10), np.float32), 1, 100003)
    with pytest.raises(TypeError):  # no silent casts in the binding; resample() converts
        _core.resample(np.zeros((1, 10)), 1, 2)
    with pytest.raises(ParameterError):
        resample(np.zeros(10), 16000, None)


def test_fuzz_random_rates_and_shapes_give_value_error_or_resample_poly():
    rng = np.random.default_rng(99)
    for _ in range(40):
        sr_in, sr_out = (int(v) for v in rng.integers(-5, 3000, 2))
        batch, length = int(rng.integers(0, 3)), int(rng.integers(0, 300))
        x = rng.standard_normal((batch, length)).astype(np.float32)
        try:
            ours = _core.resample(x, sr_in, sr_out)
        except ValueError:
            assert sr_in < 1 or sr_out < 1
            continue
        up, down = factors(sr_in, sr_out)
        assert ours.shape == (batch, -(-length * up // down))
        if up != down and batch and length:
            ref = scipy.signal.resample_poly(x.astype(np.float64), up, down, axis=-1,
                                             window=reference_filter(up, down))
            np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
        elif up == down:
            np.testing.assert_array_equal(ours, x)
