"""Task arithmetic: the merge formula against an explicit computation, its errors, and
`ssondo merge` on two real runs distilled from the same initial weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pyssondo import cli
from pyssondo.config import MelConfig
from pyssondo.merge import merge_task_vectors
from pyssondo.train.config import DistillConfig
from pyssondo.train.distill import distill

MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)


def random_state(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, generator=g), "bn.running_mean": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(seed * 10)}


def test_merge_equals_theta0_plus_weighted_task_vectors():
    base, a, b = random_state(0), random_state(1), random_state(2)
    merged = merge_task_vectors(base, [a, b], [0.7, -0.25])
    for key in ("conv.weight", "bn.running_mean"):
        expected = base[key].numpy() + 0.7 * (a[key].numpy() - base[key].numpy()) \
            - 0.25 * (b[key].numpy() - base[key].numpy())
        np.testing.assert_allclose(merged[key].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert int(merged["bn.num_batches_tracked"]) == 0  # integer buffers keep theta_0's value
    single = merge_task_vectors(base, [a], [1.0])  # lambda 1 on one student gives that student
    torch.testing.assert_close(single["conv.weight"], a["conv.weight"])


def test_merge_rejects_mismatched_students():
    base, a = random_state(0), random_state(1)
    with pytest.raises(ValueError, match="2 lambdas for 1 students"):
        merge_task_vectors(base, [a], [0.5, 0.5])
    wrong_shape = dict(a, **{"conv.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match=r"runB: conv.weight has shape \(4, 4\)"):
        merge_task_vectors(base, [wrong_shape], [1.0], names=["runB"])
    missing = {k: v for k, v in a.items() if k != "bn.running_mean"}
    with pytest.raises(ValueError, match="missing"):
        merge_task_vectors(base, [missing], [1.0])


@pytest.mark.parametrize("name", ["micronet-m0", "mobilevitv2-050"])
def test_merge_of_hearables_students_loads_and_runs(name):
    """Real state dicts of the new families: lambda 1/2 each of two students is their mean
    (float tensors), the merged weights load into the student and give finite embeddings."""
    from pyssondo.students import create_student

    torch.manual_seed(0)
    base, a, b = (create_student(name, n_mels=64).state_dict() for _ in range(3))
    merged = merge_task_vectors(base, [a, b], [0.5, 0.5])
    for key, value in merged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2, rtol=1e-5, atol=1e-6)
    student = create_student(name, n_mels=64).eval()
    student.load_state_dict(merged)
    with torch.no_grad():
        assert torch.isfinite(student(torch.randn(2, 64, 40))).all()


def test_ssondo_merge_on_two_runs_from_the_same_init(tmp_path, shared_data, one_thread):
    from pyssondo.students import create_student
    from pyssondo.teachers import build_teacher_file

    audio = tmp_path / "audio"
    audio.mkdir()
    for path in sorted((shared_data / "pool").glob("*.flac"))[:8]:
        shutil.copy(path, audio / path.name)
    build_teacher_file("crepe-tiny", tmp_path / "crepe-tiny.pt")
    torch.manual_seed(0)
    torch.save(create_student("mn01", n_mels=64).state_dict(), tmp_path / "init.pt")
    runs = []
    for seed in (1, 2):
        cfg = DistillConfig(teacher=str(tmp_path / "crepe-tiny.pt"), audio=str(audio), student="mn01",
                            mel=MEL, window_s=2.0, clusters=2, batch_size=4, epochs=1, lr=3e-3,
                            val_fraction=0.25, workers=0, threads=1, seed=seed,
                            init=str(tmp_path / "init.pt"), cache_dir=str(tmp_path / "cache"),
                            out=str(tmp_path / f"runs{seed}"))
        runs.append(distill(cfg, progress=False, export=False).run)

    out, weights = tmp_path / "merged.pt", tmp_path / "merged_weights.pt"
    assert cli.main(["merge", str(tmp_path / "init.pt"), str(runs[0].path), str(runs[1].path),
                     "--lambdas", "0.7,0.3", "-o", str(out), "--weights", str(weights)]) == 0

    base = torch.load(tmp_path / "init.pt", weights_only=True)
    thetas = [torch.load(r.last, weights_only=True)["student"] for r in runs]
    merged = torch.load(weights, weights_only=True)
    key = next(k for k, v in base.items() if v.is_floating_point() and v.numel() > 100)
    expected = base[key] + 0.7 * (thetas[0][key] - base[key]) + 0.3 * (thetas[1][key] - base[key])
    torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(thetas[0][key], thetas[1][key])  # the runs really differ

    exported = torch.jit.load(str(out))
    wav = torch.randn(2, 16000)
    student = create_student("mn01", n_mels=64)
    student.load_state_dict(merged)
    from pyssondo.export import wrap

    with torch.no_grad():
        torch.testing.assert_close(exported(wav), wrap(student, None, MEL, 2.0)(wav),
                                   rtol=1e-4, atol=1e-5)
