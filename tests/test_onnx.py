"""ONNX export (run by onnxruntime) against the TorchScript export, the DFT front end against
the FFT one, static int8 students against float32, and `ssondo export/embed/eval` with .onnx."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyssondo.audio import load_audio
from pyssondo.calibration import from_audio_dir
from pyssondo.frontend import MelConfig
from pyssondo.export import save_export, wrap
from pyssondo.frontend import DftLogMel, LogMel
from pyssondo.heads import make_head
from pyssondo.segments import cut_segment
from pyssondo.students import create_student

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from pyssondo.onnx_export import save_onnx  # noqa: E402
from pyssondo.onnx_model import OnnxStudent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
       "SSONDO_PROGRESS": "0"}
MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)
WINDOW_S = 1.0   # 16000 samples, so several windows stay cheap
TOLERANCE = 1e-4  # ONNX vs TorchScript, relative to the largest |output|


def real_audio(shared_data: Path, n: int = 4) -> list:
    """Spoken digits (8 kHz files, resampled to 16 kHz) and instrument notes, float32 [T]."""
    paths = sorted((shared_data / "fsdd").glob("*.wav"))[:n // 2]
    paths += sorted((shared_data / "notes").glob("*.flac"))[:n - len(paths)]
    return [load_audio(p, MEL.sample_rate)[0] for p in paths]


@pytest.fixture(scope="module")
def student(shared_data):
    """mn01 + MLP head with batch-norm statistics of real log-mel (so eval mode is not an
    identity and activations have realistic ranges)."""
    torch.manual_seed(0)
    backbone = create_student("mn01", n_mels=MEL.n_mels)
    head = make_head("mlp", int(backbone.embed_dim), 32)
    windows = from_audio_dir(shared_data / "pool", MEL.sample_rate, 16000, n=16).waveforms
    backbone.train()
    with torch.no_grad():
        for _ in range(3):
            backbone(LogMel(MEL)(torch.from_numpy(windows)))
    return backbone.eval(), head.eval()


@pytest.fixture(scope="module")
def exports(student, tmp_path_factory):
    """For each front end: (eager module, ONNX file, TorchScript file)."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for fe in ("fft", "dft"):
        module = wrap(*student, MEL, WINDOW_S, frontend=fe)
        meta = {"frontend": fe, "teacher": {"name": "none"}}
        onnx_report = save_onnx(module, root / f"{fe}.onnx", meta, measure=False)
        save_export(module, root / f"{fe}.pt", meta, measure=False)
        assert onnx_report.max_rel_diff <= TOLERANCE
        out[fe] = (module, root / f"{fe}.onnx", root / f"{fe}.pt")
    return out


def test_dft_front_end_equals_fft_front_end_on_real_audio(shared_data):
    clips = real_audio(shared_data)
    configs = [MEL, MEL.replace(center=True, power=1.0),  # 1024 = 32 x 32, hop 512 divides it
               MEL.replace(n_fft=400, win_length=300, hop_length=160, window="hamming",
                           center=True, pad_mode="constant"),  # 20 x 20, frames gathered
               MEL.replace(n_fft=509, win_length=509, hop_length=200)]  # prime: a plain DFT
    for cfg in configs:
        fft, dft = LogMel(cfg), DftLogMel(cfg)
        scripted = torch.jit.script(dft)
        for wav in clips + [clips[0][:1], clips[0][:cfg.n_fft // 2]]:
            x = torch.from_numpy(wav)[None]
            want = fft(x)
            assert dft(x).shape == want.shape
            assert float((dft(x) - want).abs().max()) <= 1e-4, cfg
            assert float((scripted(x) - want).abs().max()) <= 1e-4


@pytest.mark.parametrize("frontend", ["fft", "dft"])
def test_onnx_equals_torchscript_on_every_length(exports, shared_data, frontend):
    import onnx

    module, onnx_path, ts_path = exports[frontend]
    ort, ts = OnnxStudent(onnx_path), torch.jit.load(str(ts_path))
    w = module.window
    g = torch.Generator().manual_seed(0)
    inputs = [0.1 * torch.randn(2, t, generator=g) for t in (1, 300, w, 3 * w + 4321)]
    inputs += [torch.from_numpy(wav)[None] for wav in real_audio(shared_data)]
    with torch.no_grad():
        for x in inputs:
            emb, seg = (torch.from_numpy(a) for a in ort.run(x))
            want_emb, want_seg = ts(x), ts.segments(x)
            assert emb.shape == want_emb.shape and seg.shape == want_seg.shape
            assert seg.shape[1] == -(-x.shape[1] // w)
            for got, want in ((emb, want_emb), (seg, want_seg)):
                scale = float(want.abs().max())
                assert scale > 1e-3  # a meaningful comparison, not of near-zero outputs
                assert float((got - want).abs().max()) <= TOLERANCE * scale
    meta = ort.meta
    assert meta["container"] == "onnx" and meta["frontend"] == frontend
    assert meta["sample_rate"] == 16000 and meta["segment_samples"] == w
    assert meta["embed_dim"] == 32 and meta["outputs"] == ["embedding", "segments"]
    graph = onnx.load(str(onnx_path)).graph
    # The front end is stored as the few numbers it is built from (window, filterbank entries,
    # DFT factors), not folded into dense constants (263 KB of filterbank zeros, 70 KB of DFT).
    weights = sum(p.numel() for p in module.parameters())
    assert sum(int(np.prod(t.dims)) for t in graph.initializer) < weights + 10_000
    ops = {n.op_type for n in graph.node}
    if frontend == "dft":  # runs where FFT ops are missing
        assert not ops & {"STFT", "DFT"}
    else:
        assert "DFT" in ops  # torch.fft.rfft


def test_embed_and_eval_accept_an_onnx_model(exports, tmp_path, shared_data):
    from pyssondo.evaluation.embed import open_embedder

    module, onnx_path, _ = exports["fft"]
    files = sorted((shared_data / "fsdd").glob("*.wav"))[:3]
    emb = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "embed", str(onnx_path),
                           *map(str, files), "-o", str(emb), "--threads", "1"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        want = np.stack([module(torch.from_numpy(load_audio(f, 16000)[0])[None])[0].numpy()
                         for f in files])
    np.testing.assert_allclose(np.load(emb), want, atol=1e-4 * np.abs(want).max())
    embedder = open_embedder(str(onnx_path))  # what `ssondo eval` uses for a MODEL
    assert embedder.sample_rate == 16000 and embedder.params > 0
    batch = np.stack([cut_segment(load_audio(f, 16000)[0], 0, 8000) for f in files])
    with torch.no_grad():
        np.testing.assert_allclose(embedder.embed_batch(batch), module(torch.from_numpy(batch)),
                                   atol=1e-4 * np.abs(want).max())


def test_bad_onnx_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "embed", str(bad), str(bad),
                           "-o", str(tmp_path / "e.npy")], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "ONNX" in proc.stderr


@pytest.mark.slow
def test_int8_keeps_the_float_embedding_on_held_out_audio(student, exports, shared_data, tmp_path):
    """Static int8 (TorchScript FX and ONNX QDQ), calibrated on pool windows, on held-out notes
    and digits: mean cosine to float32 >= 0.98 (the tolerance of the requirement)."""
    module, _, _ = exports["fft"]
    calibration = from_audio_dir(shared_data / "pool", MEL.sample_rate, module.window, n=16)
    held = torch.from_numpy(np.stack([w[:16000] if len(w) >= 16000 else
                                      np.pad(w, (0, 16000 - len(w))) for w in
                                      real_audio(shared_data, 8)]))
    ts = save_export(module, tmp_path / "int8.pt", {}, int8=calibration, measure=False)
    onnx8 = save_onnx(module, tmp_path / "int8.onnx", {}, int8=calibration, measure=False)
    assert ts.size_bytes < 0.6 * ts.int8["fp32_size_bytes"]  # mn01: the front end is a big part
    assert onnx8.size_bytes < 0.7 * onnx8.int8["fp32_size_bytes"]
    # The untrained student needs no float32 block in torch; ONNX keeps its first one float32.
    assert ts.meta.int8_check["float_units"] == []
    assert onnx8.meta.int8_check["float_units"] == ["backbone.features.0"]
    with torch.no_grad():
        want = module(held)
        for got in (torch.jit.load(str(ts.path))(held), OnnxStudent(onnx8.path)(held)):
            cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
            assert float(cos.mean()) >= 0.98, cos


def test_export_command_validates_settings_first(tmp_path, capsys, monkeypatch):
    """Bad settings are one-line errors, found before any checkpoint is read."""
    from pyssondo import cli

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    for args, words in (([str(run), "-o", "x.onnx", "--calibrate", str(tmp_path)], "--int8"),
                        ([str(run), "-o", "x.pt", "--int8", "--calibrate", "nope/"], "nope"),
                        ([str(run), "-o", "x.onnx"], "not a run folder")):
        assert cli.main(["export", *args]) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.slow
def test_export_run_writes_int8_onnx_calibrated_on_the_run(tmp_path, shared_data):
    """A real (tiny) run: `ssondo export RUN --int8 -o s.onnx` calibrates on the run's own
    segments and agrees with the float TorchScript export on held-out clips."""
    from pyssondo.teachers import build_teacher_file
    from pyssondo.train.config import DistillConfig
    from pyssondo.train.distill import distill

    pool = sorted((shared_data / "pool").glob("*.flac"))
    audio = tmp_path / "audio"
    audio.mkdir()
    for path in pool[:8]:
        shutil.copy(path, audio / path.name)
    build_teacher_file("crepe-tiny", tmp_path / "crepe-tiny.pt")
    cfg = DistillConfig(teacher=str(tmp_path / "crepe-tiny.pt"), audio=str(audio),
                        student="mn01", mel=MEL, window_s=2.0, clusters=2, batch_size=8,
                        epochs=1, val_fraction=0.25, workers=0, threads=1,
                        cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "runs"), views=1)
    run = distill(cfg, progress=False).run.path  # writes the float TorchScript student.pt
    out = tmp_path / "s8.onnx"
    proc = subprocess.run([sys.executable, "-m", "pyssondo", "export", str(run), "-o", str(out),
                           "--int8", "--frontend", "dft", "--threads", "1"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "front end: dft (--frontend)" in proc.stdout
    assert "of the run's" in proc.stdout and "cosine to fp32" in proc.stdout
    q, f = OnnxStudent(out), torch.jit.load(str(run / "student.pt"))
    assert q.meta["int8"] is True and "run's" in q.meta["int8_calibration"]
    assert q.meta["frontend"] == "dft" and q.meta["training"]["run"] == run.name
    held = torch.from_numpy(np.stack([load_audio(p, 16000)[0][:32000] for p in pool[8:12]]))
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(held), f(held), dim=-1)
    assert float(cos.mean()) >= 0.98, cos


def test_score_kept_compares_probe_scores(exports, shared_data, tmp_path):
    """`ssondo export --int8 --eval DATA`'s line: the same student as "int8" and "fp32" (ONNX and
    TorchScript files of one module) keeps 100% of the score."""
    import csv

    from pyssondo.commands.export import score_kept
    from pyssondo.evaluation.data import load_labeled

    _, onnx_path, ts_path = exports["fft"]
    rows = list(csv.DictReader(open(shared_data / "fsdd" / "labels.csv")))
    picked = [r for d in ("0", "1") for s in ("train", "test")
              for r in [r for r in rows if r["digit"] == d and r["split"] == s][:6]]
    for r in picked:  # a CSV names files inside its own folder
        shutil.copy(shared_data / "fsdd" / r["path"], tmp_path / r["path"])
    table = tmp_path / "labels.csv"
    table.write_text("path,label,split\n" + "".join(
        f"{r['path']},{r['digit']},{r['split']}\n" for r in picked))
    task = load_labeled(table, split_column="split")
    line = score_kept(onnx_path, ts_path, [task])
    assert "--eval linear: int8 keeps 100.0%" in line and "--eval knn: int8 keeps 100.0%" in line
