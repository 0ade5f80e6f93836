"""The strict C++ WAV reader (_core.read_wav, shared with the C++ app) vs soundfile."""
import numpy as np
import pytest
import soundfile as sf

from pyssondo import _core

SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]


@pytest.mark.parametrize("fmt", ["WAV", "WAVEX"])
@pytest.mark.parametrize("subtype", SUBTYPES)
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_matches_soundfile(tmp_path, fmt, subtype, channels):
    x = np.random.default_rng(channels).uniform(-1, 1, (1001, channels))
    path = tmp_path / "a.wav"
    sf.write(path, x, 22050, format=fmt, subtype=subtype)
    ours, sr = _core.read_wav(str(path))
    ref, ref_sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == ref_sr == 22050
    assert ours.dtype == np.float32 and ours.shape == (channels, 1001)
    np.testing.assert_allclose(ours, ref.T, atol=1e-7, rtol=0)


def written(tmp_path, name="a.wav", subtype="PCM_16"):
    path = tmp_path / name
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (800, 2)), 16000, subtype=subtype)
    return path


def test_missing_directory_empty_and_not_wav(tmp_path):
    with pytest.raises(ValueError, match="missing.wav: no such file"):
        _core.read_wav(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="no such file"):
        _core.read_wav(str(tmp_path))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav: the file is empty"):
        _core.read_wav(str(empty))
    flac = tmp_path / "a.flac"
    sf.write(flac, np.zeros((100, 1)), 16000)
    with pytest.raises(ValueError, match="a.flac: not a WAV file"):
        _core.read_wav(str(flac))
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="noise.wav: not a WAV file"):
        _core.read_wav(str(noise))


@pytest.mark.parametrize("keep,match", [(12, "truncated header"), (30, "truncated header"),
                                        (44, "truncated: the data chunk declares"),
                                        (1000, "truncated: the data chunk declares")])
def test_truncated(tmp_path, keep, match):
    path = written(tmp_path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=match):
        _core.read_wav(str(path))


def test_zero_length_data_and_bad_samples(tmp_path):
    path = tmp_path / "none.wav"
    sf.write(path, np.zeros((0, 1)), 16000)
    with pytest.raises(ValueError, match="none.wav: zero-length data"):
        _core.read_wav(str(path))
    x = np.zeros((50, 2), np.float32)
    x[17, 1] = np.nan
    bad = tmp_path / "nan.wav"
    sf.write(bad, x, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN or inf sample at frame 17"):
        _core.read_wav(str(bad))


def test_unsupported_encoding(tmp_path):
    path = tmp_path / "ulaw.wav"
    sf.write(path, np.zeros((100, 1)), 8000, subtype="ULAW")
    with pytest.raises(ValueError, match="ulaw.wav: unsupported WAV encoding"):
        _core.read_wav(str(path))
