"""load_audio on every format soundfile writes here, mono mixing, resampling, and AudioError
for missing, unreadable, non-audio, empty, truncated and NaN/inf files (all written here)."""
import numpy as np
import pytest
import soundfile as sf

from pyssondo import AudioError, ParameterError, load_audio, resample
from pyssondo.audio import audio_info

SR = 16000


def stereo(seconds=0.5, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)],
                    axis=1).astype(np.float32)


# (extension, soundfile format, subtype, max abs error of the decoded samples or None if lossy)
FORMATS = [
    ("wav", "WAV", "PCM_16", 1e-4), ("wav", "WAV", "PCM_24", 1e-6), ("wav", "WAV", "FLOAT", 0.0),
    ("wav", "WAV", "PCM_U8", 1e-2), ("flac", "FLAC", "PCM_16", 1e-4),
    ("aiff", "AIFF", "PCM_16", 1e-4), ("ogg", "OGG", "VORBIS", None), ("opus", "OGG", "OPUS", None),
    ("mp3", "MP3", "MPEG_LAYER_III", None),
]


@pytest.mark.parametrize("ext,fmt,subtype,tol", FORMATS, ids=[f"{f[0]}-{f[2]}" for f in FORMATS])
def test_every_written_format_loads_mixed_to_mono(tmp_path, ext, fmt, subtype, tol):
    x = stereo()
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    wav, sr = load_audio(path)
    assert sr == SR and wav.dtype == np.float32 and wav.ndim == 1 and wav.flags.c_contiguous
    mono = x.mean(axis=1)
    if tol is not None:
        assert wav.shape == mono.shape
        np.testing.assert_allclose(wav, mono, atol=tol)
    else:  # lossy: same length and (after any codec delay) the same waveform shape
        assert abs(wav.size - mono.size) <= 0.1 * mono.size
        n = min(wav.size, mono.size)
        spec_in = np.abs(np.fft.rfft(mono[:n]))
        spec_out = np.abs(np.fft.rfft(wav[:n]))
        assert np.corrcoef(spec_in, spec_out)[0, 1] > 0.9
    multi, _ = load_audio(path, mono=False)
    assert multi.shape == (2, wav.size) and multi.dtype == np.float32
    np.testing.assert_allclose(multi.mean(axis=0), wav, atol=1e-6)


def test_resampling_on_load_uses_the_core_resampler(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, stereo(), SR)
    native, sr = load_audio(path)
    wav, sr32 = load_audio(path, sr=32000)
    assert (sr, sr32) == (SR, 32000)
    assert wav.shape == (2 * native.size,) and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, resample(native, SR, 32000))
    multi, _ = load_audio(path, sr=8000, mono=False)
    assert multi.shape == (2, native.size // 2)
    same, _ = load_audio(path, sr=SR)
    np.testing.assert_array_equal(same, native)


def test_real_audio_from_the_shared_data(shared_data):
    path = sorted((shared_data / "fsdd").rglob("*.wav"))[0]
    info = audio_info(path)
    wav, sr = load_audio(path, sr=32000)
    assert sr == 32000 and wav.size == -(-info.frames * 32000 // info.sample_rate)
    assert np.isfinite(wav).all() and 0 < np.abs(wav).max() <= 1.5


def write_wav(path, x, subtype="PCM_16"):
    sf.write(path, x, SR, subtype=subtype)
    return path


def test_missing_and_directory(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.flac", "noise.mp3", "noise"])
def test_random_bytes_are_not_audio(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match=r"noise.*not a readable audio file"):
        load_audio(path)


def test_zero_length_file_and_zero_frames(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(empty)
    no_frames = write_wav(tmp_path / "noframes.wav", np.zeros((0, 1), np.float32))
    with pytest.raises(AudioError, match="noframes.wav: the file holds no samples"):
        load_audio(no_frames)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_wav(tmp_path, keep):
    path = write_wav(tmp_path / "cut.wav", stereo())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AudioError, match="cut.wav: truncated"):
        load_audio(path)


def test_truncated_header(tmp_path):
    path = write_wav(tmp_path / "head.wav", stereo())
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match="head.wav"):
        load_audio(path)


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (SR, 2)), SR)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_samples(tmp_path, bad):
    x = stereo()
    x[123, 1] = bad
    path = write_wav(tmp_path / "bad.wav", x, subtype="FLOAT")
    with pytest.raises(AudioError, match="bad.wav: NaN or inf sample at frame 123"):
        load_audio(path)


@pytest.mark.parametrize("sr", [0, -16000, 16000.5, "16000"])
def test_bad_target_rate(tmp_path, sr):
    path = write_wav(tmp_path / "a.wav", stereo())
    with pytest.raises(ParameterError, match="sr="):
        load_audio(path, sr=sr)
