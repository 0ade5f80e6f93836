"""embed_files: the windows of many files share calls of a fixed size, and each file's embedding
equals the student's own windowing and pooling, computed here from its definition with numpy."""
from __future__ import annotations

import numpy as np
import pytest

from pyssondo.window_batches import embed_files, student_window

W = 50
PROJECTION = np.random.default_rng(0).standard_normal((W, 6)).astype(np.float32)


class Recorder:
    """A stand-in window embedder (float32 [B, W] -> tanh of a fixed projection, [B, 6]) that
    records the batch of every call."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, x: np.ndarray, keys) -> np.ndarray:
        self.calls.append((x.copy(), list(keys)))
        return np.tanh(x @ PROJECTION)


def reference(wav: np.ndarray) -> np.ndarray:
    """The exported student's definition: windows of W samples from 0 (the last one zero
    padded), each weighted by its real samples over the clip's."""
    total = np.zeros(6)
    for start in range(0, len(wav), W):
        piece = wav[start:start + W]
        window = np.concatenate([piece, np.zeros(W - len(piece), np.float32)])
        total += len(piece) / len(wav) * np.tanh(window @ PROJECTION)
    return total


LENGTHS = [1, W - 1, W, W + 1, 3 * W + 7, 17, 10 * W, 2 * W - 3]


@pytest.mark.parametrize("batch", [1, 3, 4, 16, 100])
def test_every_file_equals_its_own_windows_pooled_and_every_call_has_the_batch_shape(batch):
    rng = np.random.default_rng(batch)
    waves = [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]
    embed = Recorder()
    out = list(embed_files(embed, ((f"f{i}", w) for i, w in enumerate(waves)), W, batch))
    assert [k for k, _ in out] == [f"f{i}" for i in range(len(waves))]
    for (_, got), wav in zip(out, waves):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference(wav), rtol=1e-5, atol=1e-6)
    windows = sum(-(-n // W) for n in LENGTHS)  # 26
    sizes = [len(x) for x, _ in embed.calls]
    if windows <= batch:  # the whole job in one call, unpadded
        assert sizes == [windows]
    else:
        assert set(sizes) == {batch} and len(sizes) == -(-windows // batch)
        padded = len(sizes) * batch - windows
        last, keys = embed.calls[-1]
        assert len(keys) == batch - padded and not last[batch - padded:].any()


def test_files_come_out_as_soon_as_their_windows_are_embedded():
    """A long file does not hold back the files before it: the consumer gets f0 before the
    embedder has seen f1's last window."""
    embed = Recorder()
    waves = [("f0", np.ones(W, np.float32)), ("f1", np.ones(10 * W, np.float32))]
    it = embed_files(embed, iter(waves), W, 2)
    assert next(it)[0] == "f0" and len(embed.calls) == 1
    assert [k for k, _ in it] == ["f1"] and len(embed.calls) == 6


def test_an_empty_file_is_named_and_a_bad_batch_refused():
    with pytest.raises(ValueError, match="b.wav: no samples"):
        list(embed_files(Recorder(), [("a.wav", np.ones(3, np.float32)),
                                      ("b.wav", np.zeros(0, np.float32))], W, 4))
    with pytest.raises(ValueError, match="batch=0 must be >= 1"):
        list(embed_files(Recorder(), [("a.wav", np.ones(3, np.float32))], W, 0))


def test_only_exported_students_with_segments_have_a_window():
    class Student:
        def segments(self, x):
            return x

    meta = {"format": "ssondo-student", "segment_samples": 16000}
    assert student_window(meta, Student()) == 16000
    assert student_window({"format": "ssondo-teacher"}, Student()) is None
    assert student_window(meta, object()) is None


def test_eval_of_a_student_shares_calls_and_equals_its_own_forward(tmp_path, shared_data):
    """`ssondo eval`'s embeddings of an exported student: each eval window of a file through the
    student's own windows in shared calls equals the student called on that eval window
    (its forward, the generic path), on real audio of several lengths: spoken digits shorter
    than one student window, a note, and a 3.7 s recording cut into 1.5 s eval windows of 0.5 s
    student windows with tails."""
    import dataclasses

    import soundfile as sf
    import torch

    from pyssondo.evaluation.embed import compute_embeddings, open_embedder
    from pyssondo.export import save_export, wrap
    from pyssondo.frontend import MelConfig
    from pyssondo.students import create_student

    torch.manual_seed(0)
    mel = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)
    path = tmp_path / "student.pt"
    save_export(wrap(create_student("mn01", n_mels=64), None, mel, 0.5), path, {}, measure=False)
    digits = sorted((shared_data / "fsdd").glob("*.wav"))[:5]
    notes = sorted((shared_data / "notes").glob("*.flac"))[:2]
    joined = np.concatenate([sf.read(p, dtype="float32")[0] for p in notes])
    joined = joined[: int(3.7 * 16000)] if joined.ndim == 1 else joined[: int(3.7 * 16000), 0]
    long = tmp_path / "long.wav"
    sf.write(long, joined, 16000, subtype="FLOAT")
    files = [*digits, notes[0], long]
    student = open_embedder(str(path))
    assert student.window == 8000 and student.embed_windows is not None
    generic = dataclasses.replace(student, window=None, embed_windows=None)
    got, ok = compute_embeddings(student, files, window_s=1.5, batch_size=3, progress=False)
    want, _ = compute_embeddings(generic, files, window_s=1.5, batch_size=3, progress=False)
    assert ok.all()
    scale = float(np.abs(want).max())
    assert scale > 0 and float(np.abs(got - want).max()) <= 1e-5 * scale
