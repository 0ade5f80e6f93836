"""Hugging Face audio encoders as teachers (``hf:FOLDER``) against the transformers models.

Each supported architecture is built from a tiny random config (hidden size 32, 2 layers),
saved with ``save_pretrained``, turned into a teacher file by ``ssondo teacher build`` and
compared with the transformers model called on its own feature extractor's output. Offline:
nothing is downloaded (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")

from pyssondo import cli  # noqa: E402
from pyssondo.audio import resample  # noqa: E402
from pyssondo.loading import load_model  # noqa: E402

KINDS = ["wav2vec2", "hubert", "wavlm", "whisper", "ast", "clap"]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CONV = dict(conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="module", autouse=True)
def offline():
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _tiny(kind: str):
    """(model, feature extractor) of ``kind``, random weights (seeded), hidden size 32."""
    T = transformers
    torch.manual_seed(0)
    if kind == "wav2vec2":
        return (T.Wav2Vec2Model(T.Wav2Vec2Config(**SMALL, **CONV)),
                T.Wav2Vec2FeatureExtractor(do_normalize=True))
    if kind == "hubert":
        return T.HubertModel(T.HubertConfig(**SMALL, **CONV)), T.Wav2Vec2FeatureExtractor(
            do_normalize=False)
    if kind == "wavlm":
        return (T.WavLMModel(T.WavLMConfig(**SMALL, **CONV, num_buckets=16,
                                           max_bucket_distance=40)),
                T.Wav2Vec2FeatureExtractor(do_normalize=True))
    if kind == "whisper":
        cfg = T.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2,
                              encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                              max_target_positions=32, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, decoder_start_token_id=1)
        return T.WhisperModel(cfg), T.WhisperFeatureExtractor()
    if kind == "ast":
        return (T.ASTModel(T.ASTConfig(**SMALL, max_length=128, num_mel_bins=128)),
                T.ASTFeatureExtractor(max_length=128))
    audio = T.ClapAudioConfig(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1],
                              num_attention_heads=[2, 2], window_size=4, spec_size=64,
                              num_mel_bins=16, patch_stride=(4, 4), enable_fusion=False)
    text = T.ClapTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, vocab_size=100)
    cfg = T.ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                       projection_dim=16)
    return T.ClapModel(cfg), T.ClapFeatureExtractor(feature_size=16, max_length_s=1,
                                                    truncation="rand_trunc")


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """kind -> (snapshot folder, eval-mode encoder, feature extractor)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        model, fe = _tiny(kind)
        model.eval().save_pretrained(root / kind)
        fe.save_pretrained(root / kind)
        encoder = {"whisper": lambda m: m.get_encoder(),
                   "clap": lambda m: m.audio_model}.get(kind, lambda m: m)(model)
        out[kind] = (root / kind, encoder.eval(), fe)
    return out


def _clips(shared_data, rate: int, seconds: float) -> np.ndarray:
    """Two real instrument notes [2, T] at ``rate`` Hz."""
    wavs = []
    for name in ("p000_n048_v064.flac", "p000_n048_v112.flac"):
        wav, sr = sf.read(shared_data / "notes" / name, dtype="float32")
        wavs.append(resample(wav, sr, rate)[: int(seconds * rate)])
    return np.stack(wavs)


def _features(kind: str, fe, wav: np.ndarray) -> torch.Tensor:
    """The feature extractor's (numpy) output for ``wav`` [B, T], as the model takes it."""
    rate = fe.sampling_rate
    if kind == "whisper":
        padded = np.zeros((wav.shape[0], fe.n_samples), np.float32)
        padded[:, :wav.shape[1]] = wav
        return torch.from_numpy(fe._np_extract_fbank_features(padded, "cpu")).float()
    out = fe(list(wav), sampling_rate=rate, return_tensors="np")
    key = "input_features" if kind == "clap" else "input_values"
    return torch.from_numpy(np.asarray(out[key])).float()


def _reference(kind: str, encoder, feats: torch.Tensor, layers, samples: int):
    """The transformers model's hidden states ``layers``, each [B, F, D] (Whisper: the frames
    covering ``samples``; CLAP: stage tokens row-major)."""
    with torch.no_grad():
        hs = encoder(feats, output_hidden_states=True).hidden_states
    if kind == "clap":
        hs = [h.flatten(2).transpose(1, 2) for h in hs]
    if kind == "whisper":
        hs = [h[:, : -(-samples // 320)] for h in hs]
    return [hs[i] for i in layers]


def _build(tmp_path, folder, *args) -> torch.nn.Module:
    out = tmp_path / f"teacher{len(list(tmp_path.iterdir()))}.pt"
    assert cli.main(["teacher", "build", f"hf:{folder}", "-o", str(out), *args]) == 0
    return load_model(out, role="teacher")


@pytest.mark.parametrize("kind", KINDS)
def test_front_end_equals_the_feature_extractor(kind, snapshots, shared_data):
    from pyssondo.teachers.hf import make_frontend, read_snapshot_config

    folder, _, fe = snapshots[kind]
    wav = _clips(shared_data, fe.sampling_rate, 0.9)
    ours = make_frontend(read_snapshot_config(folder)["model_type"], fe,
                         json.loads((folder / "config.json").read_text()))
    ref = _features(kind, fe, wav)
    got = torch.jit.script(ours)(torch.from_numpy(wav))
    assert got.shape == ref.shape
    # log-mel / fbank / dB values: float32 against numpy's float64
    atol = {"clap": 2e-3, "ast": 2e-4}.get(kind, 1e-4)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=atol)
    if kind == "whisper":  # and the extractor's own call (its torch path where torch exists)
        called = fe(list(wav), sampling_rate=16000, return_tensors="np").input_features
        torch.testing.assert_close(got, torch.from_numpy(called), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_teacher_equals_the_transformers_model(kind, snapshots, shared_data, tmp_path):
    folder, encoder, fe = snapshots[kind]
    layers = [1, 2] if kind == "clap" else [0, 2]  # CLAP's stage 0 has 4x the tokens
    frames = _build(tmp_path, folder, "--layers", ",".join(map(str, layers)), "--pool", "none")
    assert frames.meta["format"] == "torchscript"
    assert [t["name"] for t in frames.targets] == [f"layer{i}" for i in layers]
    # traced on the CPU, yet no device is fixed inside (so it runs on cuda too)
    assert 'value="cpu"' not in str(frames.module.core.inlined_graph)
    for seconds in (0.55, 0.9):  # any length: the model was traced on another one
        wav = _clips(shared_data, fe.sampling_rate, seconds)
        with torch.no_grad():
            got = frames.module(torch.from_numpy(wav))
        expected = torch.cat(_reference(kind, encoder, _features(kind, fe, wav), layers,
                                        wav.shape[1]), dim=-1)
        assert got.shape[-1] == sum(t["dim"] for t in frames.targets) == frames.meta["dim"]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    pooled = _build(tmp_path, folder, "--layer", "1")
    assert pooled.meta["output"] == "clip" and pooled.targets == [{"name": "layer1", "dim": 32}]
    feats = _features(kind, fe, wav)
    with torch.no_grad():
        got = pooled.module(torch.from_numpy(wav[:1]))
    ref = _reference(kind, encoder, feats[:1], [1], wav.shape[1])[0].mean(1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_clap_frames_of_stages_with_different_token_counts_are_refused(snapshots, tmp_path,
                                                                     capsys):
    folder = snapshots["clap"][0]
    code = cli.main(["teacher", "build", f"hf:{folder}", "--layers", "0,2", "--pool", "none",
                     "-o", str(tmp_path / "t.pt")])
    assert code == 1 and "different frame counts" in capsys.readouterr().err
    assert not (tmp_path / "t.pt").exists()


def test_state_file_with_a_layer_mean_equals_the_model(snapshots, shared_data, tmp_path):
    folder, encoder, fe = snapshots["wavlm"]
    wav = _clips(shared_data, 16000, 0.7)
    state = _build(tmp_path, folder, "--layer-mean", "1:2", "--pool", "none", "--format",
                   "state")
    assert state.meta["format"] == "state" and not isinstance(state.module,
                                                              torch.jit.ScriptModule)
    assert state.targets == [{"name": "layers1-2-mean", "dim": 32}]
    ref = torch.stack(_reference("wavlm", encoder, _features("wavlm", fe, wav), [1, 2],
                                 wav.shape[1])).mean(0)
    with torch.no_grad():
        got = state.module(torch.from_numpy(wav))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # the fingerprint covers the weights: another snapshot gives another file hash
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    model = transformers.WavLMModel.from_pretrained(other)
    with torch.no_grad():
        model.encoder.layers[1].feed_forward.output_dense.bias.add_(1.0)
    model.save_pretrained(other)
    changed = _build(tmp_path, other, "--layer-mean", "1:2", "--pool", "none", "--format",
                     "state")
    assert changed.fingerprint != state.fingerprint


@pytest.mark.parametrize("args, message", [
    (["--layer", "3"], "layer 3 does not exist; this hubert model has hidden states 0..2"),
    (["--layers", "1,x"], "layer 'x' must be an integer >= 0"),
    (["--layer-mean", "2:1"], "--layer-mean '2:1' must be A:B"),
])
def test_bad_layer_settings_are_one_line_errors(snapshots, tmp_path, capsys, args, message):
    out = tmp_path / "t.pt"
    assert cli.main(["teacher", "build", f"hf:{snapshots['hubert'][0]}", "-o", str(out),
                     *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_unsupported_model_or_missing_snapshot_is_one_line(tmp_path, capsys):
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(**SMALL)).save_pretrained(bert)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(bert)
    capsys.readouterr()
    assert cli.main(["teacher", "build", f"hf:{bert}", "-o", str(tmp_path / "t.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "model_type 'bert' is not supported" in err and "wav2vec2, hubert, wavlm, whisper" in err
    assert len(err.splitlines()) == 1
    assert cli.main(["teacher", "build", "hf:nobody/no-such-model", "-o",
                     str(tmp_path / "t.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a repo id in the local Hugging Face cache" in err and len(err.splitlines()) == 1


def test_cache_records_the_targets_and_a_short_distill_runs(snapshots, shared_data, tmp_path,
                                                            capsys):
    from pyssondo.cache import EmbeddingCache

    folder = snapshots["hubert"][0]
    audio = tmp_path / "audio"
    audio.mkdir()
    notes = sorted((shared_data / "notes").glob("*.flac"))[:6]
    for path in notes:
        shutil.copy(path, audio / path.name)
    two = tmp_path / "two.pt"
    assert cli.main(["teacher", "build", f"hf:{folder}", "--layers", "1,2", "-o", str(two)]) == 0
    assert cli.main(["cache", str(two), str(audio), "--window", "1", "--out",
                     str(tmp_path / "cache"), "--teacher-batch-size", "3", "--threads", "1"]) == 0
    cache = EmbeddingCache(tmp_path / "cache")
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["targets"] == [{"name": "layer1", "dim": 32}, {"name": "layer2", "dim": 32}]
    assert meta["level"] == "clip" and cache.dim == 64 and len(cache) == 2 * len(notes)
    capsys.readouterr()
    assert cli.main(["cache", "--info", str(tmp_path / "cache")]) == 0
    info = capsys.readouterr().out
    assert "targets      layer1 [32], layer2 [32]" in info and "pooled clip storage" in info
    # the first row of a file is the teacher on its first second
    wav, _ = sf.read(notes[0], dtype="float32")
    with torch.no_grad():
        ref = load_model(two).module(torch.from_numpy(wav[None, :16000]))[0].numpy()
    np.testing.assert_allclose(cache[(notes[0].name, 0)].astype(np.float32), ref, rtol=2e-3,
                               atol=2e-3)

    one = tmp_path / "one.pt"
    assert cli.main(["teacher", "build", f"hf:{folder}", "-o", str(one)]) == 0
    assert cli.main(["distill", str(one), str(audio), "--student", "mn01", "--student-sr",
                     "16000", "--n-mels", "64", "--window", "1", "--clusters", "2",
                     "--batch-size", "4", "--epochs", "1", "--val-fraction", "0.2",
                     "--workers", "0", "--threads", "1", "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "runs"),
                     "--views", "1"]) == 0
    assert list((tmp_path / "runs").glob("*/student.pt"))


def test_a_repo_id_resolves_in_the_local_hugging_face_cache(snapshots, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from pyssondo.teachers.hf import resolve_snapshot

    # the cache layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/}
    repo = tmp_path / "hub" / "models--someone--tiny-hubert"
    shutil.copytree(snapshots["hubert"][0], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_snapshot("hf:someone/tiny-hubert") == repo / "snapshots" / "0123abcd"
    teacher = _build(tmp_path, "someone/tiny-hubert", "--layer", "2")
    assert teacher.meta["source"] == "hf:someone/tiny-hubert"
