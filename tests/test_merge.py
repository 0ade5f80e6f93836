"""Task arithmetic: the merge formula against numpy on a real student's state dict, batch-norm
statistics (interpolated, never extrapolated; recomputed on audio against a reference), the
lambda grid and the choice rule on a synthetic score table, and `ssondo init` / `ssondo merge`
(export, refusals, --search, --recalibrate) on two real runs distilled from one init."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from pyssondo import cli
from pyssondo.frontend import MelConfig
from pyssondo.errors import ParameterError
from pyssondo.merging.task_vectors import bn_weights, initial_weights, is_bn_stat, merge_task_vectors
from pyssondo.merging.search import (Candidate, choose, objective, parse_grid,
                                   parse_task_weights, references, simplex_grid)
from pyssondo.merging.recalibrate import audio_windows, batchnorm_layers, log_mel_batches, recalibrate_bn
from pyssondo.train.config import DistillConfig
from pyssondo.train.distill import distill

MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)


def trained_looking_state(seed: int):
    """mn01's weights for ``seed``, with batch-norm statistics set as training leaves them
    (means anywhere, variances positive and far from 1)."""
    state = initial_weights("mn01", n_mels=64, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) * 4 + 0.01
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000 + seed)
    return state


def test_merge_equals_numpy_on_a_real_state_dict():
    base, a, b = (trained_looking_state(s) for s in (0, 1, 2))
    lambdas = [0.7, 0.7]  # sum > 1: the weights extrapolate
    merged = merge_task_vectors(base, [a, b], lambdas)
    assert merged.keys() == base.keys()
    n_weights = 0
    for key, theta0 in base.items():
        t0, ta, tb = (s[key].numpy().astype(np.float64) for s in (base, a, b))
        if key.endswith(("running_mean", "running_var")):
            expected = 0.5 * ta + 0.5 * tb  # lambda_i / sum lambda
        elif key.endswith("num_batches_tracked"):
            expected = t0  # theta_0's
        else:
            expected = t0 + 0.7 * (ta - t0) + 0.7 * (tb - t0)
            n_weights += 1
        np.testing.assert_allclose(merged[key].numpy(), expected, rtol=1e-6, atol=1e-6,
                                   err_msg=key)
        assert merged[key].dtype == theta0.dtype
    assert n_weights > 50
    variances = [k for k in base if k.endswith("running_var")]
    assert len(variances) == 43
    # The old formula made variances negative (the NaN of issue 16); the merge never does.
    naive_neg = sum(int(((base[k] + 0.7 * (a[k] - base[k]) + 0.7 * (b[k] - base[k])) < 0).sum())
                    for k in variances)
    assert naive_neg > 0
    assert all(bool((merged[k] > 0).all()) for k in variances)
    # lambda 1 on one student gives that student; lambda (1, 0) gives the first exactly.
    single, first = merge_task_vectors(base, [a], [1.0]), merge_task_vectors(base, [a, b], [1, 0])
    for key in base:
        want = base[key] if key.endswith("num_batches_tracked") else a[key]
        assert torch.equal(single[key], want) and torch.equal(first[key], want), key


def test_bn_weights_are_convex():
    assert bn_weights([0.7, 0.7]) == [0.5, 0.5]
    assert bn_weights([0.3, 0.9]) == pytest.approx([0.25, 0.75])
    assert bn_weights([1.5, -0.5]) == [1.0, 0.0]
    with pytest.raises(ParameterError, match="at least one must be positive"):
        bn_weights([0.0, -1.0])
    assert is_bn_stat("features.0.1.running_var") and not is_bn_stat("features.0.1.weight")


def test_merge_rejects_mismatched_students():
    base, a = trained_looking_state(0), trained_looking_state(1)
    with pytest.raises(ValueError, match="2 lambdas for 1 students"):
        merge_task_vectors(base, [a], [0.5, 0.5])
    key = "features.0.0.weight"
    wrong_shape = dict(a, **{key: torch.zeros(4, 4)})
    with pytest.raises(ValueError, match=rf"runB: {key} has shape \(4, 4\)"):
        merge_task_vectors(base, [wrong_shape], [1.0], names=["runB"])
    missing = {k: v for k, v in a.items() if k != key}
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


def test_recalibration_equals_the_mean_of_batch_statistics(tmp_path, shared_data, one_thread):
    from pyssondo.students import create_student

    for path in sorted((shared_data / "pool").glob("*.flac"))[:6]:
        shutil.copy(path, tmp_path / path.name)
    windows = audio_windows([tmp_path], 16000, 2.0)
    assert windows.shape == (12, 32000)  # 4 s clips, two 2 s windows each
    batches = list(log_mel_batches(windows, MEL, batch_size=5))  # 5, 5, 2 windows
    assert [b.shape[0] for b in batches] == [5, 5, 2]

    torch.manual_seed(0)
    student = create_student("mn01", n_mels=64).eval()
    weights_before = {k: v.clone() for k, v in student.state_dict().items() if not is_bn_stat(k)
                      and not k.endswith("num_batches_tracked")}
    # Reference: each batch-norm layer's inputs in a training-mode pass (batch statistics do
    # not depend on the running ones), their per-channel mean and unbiased variance per batch
    # in numpy, averaged over the batches.
    ref = copy.deepcopy(student)
    seen = {}
    for name, m in ref.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
            m.register_forward_pre_hook(
                lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0].numpy()))
    with torch.no_grad():
        for x in batches:
            ref(x)
    assert recalibrate_bn(student, batches) == 3
    layers = dict(student.named_modules())
    assert len(seen) == len(batchnorm_layers(student)) == 43
    for name, inputs in seen.items():
        x = [np.moveaxis(v.astype(np.float64), 1, 0).reshape(v.shape[1], -1) for v in inputs]
        mean = np.mean([v.mean(axis=1) for v in x], axis=0)
        var = np.mean([v.var(axis=1, ddof=1) for v in x], axis=0)
        m = layers[name]
        np.testing.assert_allclose(m.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(m.running_var.numpy(), var, rtol=1e-4, atol=1e-5, err_msg=name)
        assert int(m.num_batches_tracked) == 3 and not m.training
        assert m.momentum == dict(ref.named_modules())[name].momentum  # restored
    assert not student.training
    for k, v in student.state_dict().items():
        if k in weights_before:
            assert torch.equal(v, weights_before[k]), k


def test_lambda_grid():
    assert parse_grid("0:1:0.1") == [round(0.1 * i, 10) for i in range(11)]
    assert parse_grid("0.2:0.8:0.3") == [0.2, 0.5, 0.8]
    assert parse_grid("1,0,0.5") == [0.0, 0.5, 1.0]
    for bad in ("0:1", "a:b:c", "1:0:0.1", "0:1:0"):
        with pytest.raises(ParameterError, match="--grid"):
            parse_grid(bad)
    two = simplex_grid(2, parse_grid("0:1:0.1"))
    assert two == [(round(0.1 * i, 10), round(1 - 0.1 * i, 10)) for i in range(11)]
    three = simplex_grid(3, [0, 0.5, 1])
    assert sorted(three) == sorted([(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5),
                                    (0.5, 0.5, 0), (1, 0, 0)])
    fine = simplex_grid(3, parse_grid("0:1:0.1"))
    assert len(fine) == 66 and len(set(fine)) == 66  # C(12, 2) points of the 2-simplex
    assert all(abs(sum(t) - 1) < 1e-9 for t in fine)
    assert simplex_grid(1, [0.5, 1]) == [(0.5,), (1.0,)]
    with pytest.raises(ParameterError, match="sum to 1"):
        simplex_grid(2, [0.2, 0.3])


def test_choice_rule_on_a_synthetic_table():
    # CREPE-like parent: pitch, no timbre; aisfx-like: the reverse.
    parents = [Candidate("crepe", (1, 0), {"pitch": 0.99, "program": 0.05}, parent=True),
               Candidate("aisfx", (0, 1), {"pitch": 0.10, "program": 0.80}, parent=True)]
    merges = [Candidate("l=0.3", (0.3, 0.7), {"pitch": 0.60, "program": 0.75}),
              Candidate("l=0.5", (0.5, 0.5), {"pitch": 0.90, "program": 0.60}),
              Candidate("l=0.7", (0.7, 0.3), {"pitch": 0.95, "program": 0.50})]
    reference = references(parents)
    assert reference == {"pitch": 0.99, "program": 0.80}
    # mean shares: 0.3 -> (0.606 + 0.9375) / 2 = 0.772; 0.5 -> 0.830; 0.7 -> 0.792
    assert objective(merges[1].scores, reference) == pytest.approx((0.90 / 0.99 + 0.60 / 0.80) / 2)
    assert choose(merges, reference) == 1
    # pitch weighted 3: 0.5 -> (3 * 0.909 + 0.75) / 4 = 0.869; 0.7 -> (3 * 0.960 + 0.625) / 4 = 0.876
    assert choose(merges, reference, {"pitch": 3}) == 2
    assert choose(merges, reference, {"pitch": 0}) == 0  # program alone
    # Ties: the higher lowest share wins, then the earlier candidate.
    tie = [Candidate("a", (1, 0), {"pitch": 0.99, "program": 0.40}),
           Candidate("b", (0, 1), {"pitch": 0.792, "program": 0.56})]
    assert objective(tie[0].scores, reference) == pytest.approx(objective(tie[1].scores, reference))
    assert choose(tie, reference) == 1
    assert choose([tie[0], tie[0]], reference) == 0
    # Columns per (task, probe) take their task's weight.
    assert objective({"pitch/knn": 0.5, "program/knn": 1.0}, {"pitch/knn": 1.0, "program/knn": 1.0},
                     {"pitch": 3}) == pytest.approx((3 * 0.5 + 1.0) / 4)
    assert parse_task_weights("pitch=2", ["pitch", "program"]) == {"pitch": 2.0}
    with pytest.raises(ParameterError, match="unknown task 'timbre'"):
        parse_task_weights("timbre=2", ["pitch", "program"])
    with pytest.raises(ParameterError, match="TASK=WEIGHT"):
        parse_task_weights("pitch", ["pitch", "program"])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shared_data):
    """`ssondo init` weights and two crepe-tiny runs distilled from them (seeds 1 and 2)."""
    from pyssondo.teachers import build_teacher_file

    tmp = tmp_path_factory.mktemp("merge")
    audio = tmp / "audio"
    audio.mkdir()
    for path in sorted((shared_data / "pool").glob("*.flac"))[:8]:
        shutil.copy(path, audio / path.name)
    build_teacher_file("crepe-tiny", tmp / "crepe-tiny.pt")
    before = torch.get_num_threads()
    assert cli.main(["init", "mn01", "-o", str(tmp / "init.pt"), "--seed", "0",
                     "--n-mels", "64"]) == 0
    runs = []
    for seed in (1, 2):
        cfg = DistillConfig(teacher=str(tmp / "crepe-tiny.pt"), audio=str(audio), student="mn01",
                            mel=MEL, window_s=2.0, clusters=2, batch_size=4, epochs=1, lr=3e-3,
                            val_fraction=0.25, workers=0, threads=1, seed=seed,
                            init=str(tmp / "init.pt"), cache_dir=str(tmp / "cache"),
                            out=str(tmp / f"runs{seed}"), loss="cosine", target_norm="whiten",
                            views=1)
        runs.append(distill(cfg, progress=False, export=False).run)  # whitened: --projected
        # must undo the chosen run's normalisation
    torch.set_num_threads(before)
    return tmp, audio, runs


def test_init_writes_the_seeded_student_and_runs_record_it(two_runs):
    from pyssondo.students import create_student
    from pyssondo.train.checkpoint import weights_fingerprint

    tmp, _, runs = two_runs
    init = torch.load(tmp / "init.pt", weights_only=True)
    torch.manual_seed(0)
    expected = create_student("mn01", n_mels=64).state_dict()
    assert init.keys() == expected.keys()
    assert all(torch.equal(init[k], expected[k]) for k in init)
    for run in runs:
        recorded = json.loads(run.config.read_text())
        assert recorded["init_fingerprint"] == weights_fingerprint(init)
    other = initial_weights("mn01", n_mels=64, seed=1)
    assert weights_fingerprint(other) != weights_fingerprint(init)


def test_ssondo_merge_formula_bn_and_export(two_runs, tmp_path, one_thread):
    from pyssondo.export import wrap
    from pyssondo.students import create_student

    src, audio, runs = two_runs
    out, weights = tmp_path / "merged.pt", tmp_path / "merged_weights.pt"
    assert cli.main(["merge", str(src / "init.pt"), str(runs[0].path), str(runs[1].path),
                     "--lambdas", "0.7,0.3", "-o", str(out), "--weights", str(weights)]) == 0
    base = torch.load(src / "init.pt", weights_only=True)
    thetas = [torch.load(r.last, weights_only=True)["student"] for r in runs]
    merged = torch.load(weights, weights_only=True)
    key = next(k for k, v in base.items() if v.is_floating_point() and v.numel() > 100)
    expected = base[key] + 0.7 * (thetas[0][key] - base[key]) + 0.3 * (thetas[1][key] - base[key])
    torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(thetas[0][key], thetas[1][key])  # the runs really differ
    var = next(k for k in base if k.endswith("running_var"))
    torch.testing.assert_close(merged[var], 0.7 * thetas[0][var] + 0.3 * thetas[1][var])

    exported = torch.jit.load(str(out))
    wav = torch.randn(2, 16000)
    student = create_student("mn01", n_mels=64)
    student.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(exported(wav), wrap(student, None, MEL, 2.0)(wav),
                                   rtol=1e-4, atol=1e-5)

    # Extrapolating lambdas (the NaN of issue 16), and statistics recomputed on audio.
    from pyssondo.audio import load_audio

    clip = torch.from_numpy(load_audio(sorted(audio.glob("*.flac"))[0], 16000)[0])[None]
    recal = tmp_path / "recal_weights.pt"
    assert cli.main(["merge", str(src / "init.pt"), str(runs[0].path), str(runs[1].path),
                     "--lambdas", "0.7,0.7", "--recalibrate", str(audio), "-o", str(out),
                     "--weights", str(recal)]) == 0
    recalibrated = torch.load(recal, weights_only=True)
    assert not torch.allclose(recalibrated[var], 0.5 * thetas[0][var] + 0.5 * thetas[1][var])
    assert all(bool((recalibrated[k] >= 0).all()) for k in base if k.endswith("running_var"))
    with torch.no_grad():
        assert torch.isfinite(torch.jit.load(str(out))(clip)).all()


def test_ssondo_merge_projected_uses_the_named_head(two_runs, tmp_path, one_thread):
    from pyssondo.export import wrap
    from pyssondo.heads import make_head
    from pyssondo.students import create_student

    src, _, runs = two_runs
    out, weights = tmp_path / "projected.pt", tmp_path / "w.pt"
    assert cli.main(["merge", str(src / "init.pt"), str(runs[0].path), str(runs[1].path),
                     "--projected", "--head-from", str(runs[1].path), "-o", str(out),
                     "--weights", str(weights)]) == 0
    state = torch.load(runs[1].last, weights_only=True)
    student = create_student("mn01", n_mels=64)
    student.load_state_dict(torch.load(weights, weights_only=True))
    head = make_head("mlp", student.embed_dim, 256)
    head.load_state_dict(state["head"])
    norm = state["target_norm"]  # the run's whitening, undone: back in the teacher's space
    wav = torch.randn(1, 20000)
    with torch.no_grad():
        got = torch.jit.load(str(out))(wav)
        assert got.shape == (1, 256)  # CREPE tiny's space
        want = (wrap(student, head, MEL, 2.0)(wav) @ norm["norms.0.inverse_map"]
                + norm["norms.0.mean"])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_ssondo_merge_refusals(two_runs, tmp_path, capsys):
    from pyssondo.train.checkpoint import load_checkpoint, save_checkpoint

    src, _, runs = two_runs
    base, a, b = str(src / "init.pt"), str(runs[0].path), str(runs[1].path)
    other = tmp_path / "other_init.pt"
    assert cli.main(["init", "mn01", "-o", str(other), "--seed", "1", "--n-mels", "64"]) == 0
    changed = tmp_path / "changed-run"
    shutil.copytree(runs[1].path, changed)
    state = load_checkpoint(changed / "checkpoints" / "last.pt")
    cfg = DistillConfig.from_json(state["config"]).replace(window_s=3.0)
    save_checkpoint(changed / "checkpoints" / "last.pt", {**state, "config": cfg.to_json()})
    cases = [
        (["merge", str(other), a, b, "-o", "m.pt"], "started from --init .*not from BASE .*other_init.pt"),
        (["merge", base, a, str(changed), "-o", "m.pt"], "changed-run: student mn01.*window 3 s differ"),
        (["merge", base, a, b, "--projected", "-o", "m.pt"], "choose one with --head-from RUN"),
        (["merge", base, a, b, "--projected", "--head-from", base, "-o", "m.pt"], "not one of the RUNs"),
        (["merge", base, a, b, "--head-from", a, "-o", "m.pt"], "--head-from RUN goes with --projected"),
        (["merge", base, a, b, "--lambdas", "0.5,0.5", "--search", a, "-o", "m.pt"], "exclude each other"),
        (["merge", base, a, b, "--lambdas=-1,0", "-o", "m.pt"], "at least one must be positive"),
        (["merge", base, a, b, "--grid", "0:1", "--search", a, "-o", "m.pt"], "--grid '0:1'"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert __import__("re").search(message, err), (message, err)
    assert not (tmp_path / "m.pt").exists()
    # A run written before runs recorded their start passes when its --init names BASE.
    from pyssondo.merging.runs import load_parents

    old = tmp_path / "old-run"
    shutil.copytree(runs[0].path, old)
    recorded = json.loads((old / "config.json").read_text())
    del recorded["init_fingerprint"]
    (old / "config.json").write_text(json.dumps(recorded))
    assert [p.spec for p in load_parents(base, [str(old), b])[1]] == [str(old), b]
    shutil.copy(base, tmp_path / "copy_of_init.pt")  # same weights, another file: not provable
    with pytest.raises(ValueError, match="old-run: started from --init .*not from BASE"):
        load_parents(str(tmp_path / "copy_of_init.pt"), [str(old), b])
    # Two runs of one teacher whose folders share a name (made in the same second under two
    # --out folders) get labels that tell them apart; the search keys its scores by label.
    twin = tmp_path / "elsewhere" / runs[0].path.name
    shutil.copytree(runs[0].path, twin)
    names = [p.name for p in load_parents(base, [a, str(twin), a])[1]]
    assert names == [f"{runs[0].path.parent.name}/{runs[0].path.name}",
                     f"elsewhere/{runs[0].path.name}",
                     f"{runs[0].path.parent.name}/{runs[0].path.name}#2"]


def test_ssondo_merge_search_picks_the_best_mean_share(two_runs, tmp_path, shared_data, capsys,
                                                      one_thread):
    import csv

    src, _, runs = two_runs
    data = tmp_path / "notes"
    data.mkdir()
    with open(shared_data / "notes" / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["program"] in ("0", "11")]
    for r in rows:
        shutil.copy(shared_data / "notes" / r["path"], data / r["path"])
    with open(data / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out, plot = tmp_path / "merged.pt", tmp_path / "search.png"
    csv_path = str(data / "labels.csv")
    assert cli.main(["merge", str(src / "init.pt"), str(runs[0].path), str(runs[1].path),
                     "--search", csv_path, csv_path, "--label-column", "pitch_class",
                     "--label-column", "program", "--grid", "0:1:0.5", "--folds", "3",
                     "--task-weights", "pitch_class=2", "--plot", str(plot), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lambda=0.5,0.5" in printed and "chosen: lambdas" in printed
    extra = {"ssondo.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    search = json.loads(extra["ssondo.json"])["merge"]["search"]
    cands = search["candidates"]
    assert [c["name"] for c in cands][2:] == ["lambda=0,1", "lambda=0.5,0.5", "lambda=1,0"]
    # The rule, recomputed here: share = score / best parent score per task, weighted mean.
    best = {t: max(c["scores"][t] for c in cands[:2]) for t in ("pitch_class", "program")}
    value = [(2 * c["scores"]["pitch_class"] / best["pitch_class"]
              + c["scores"]["program"] / best["program"]) / 3 for c in cands[2:]]
    chosen = cands[2 + int(np.argmax(value))]
    assert json.loads(extra["ssondo.json"])["merge"]["lambdas"] == chosen["lambdas"]
    # Lambda (1, 0) with interpolated statistics is the first parent itself.
    assert cands[4]["scores"] == cands[0]["scores"]
    assert plot.is_file() and plot.read_bytes()[:4] == b"\x89PNG"


def _files(root):
    """{relative path: (size, mtime_ns)} of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_ssondo_merge_search_unlabeled(two_runs, tmp_path, capsys, monkeypatch, one_thread):
    from pyssondo.audio import load_audio
    from pyssondo.cache import EmbeddingCache
    from pyssondo.evaluation.agreement import knn_agreement
    from pyssondo.frontend import log_mel
    from pyssondo.merging.runs import load_parents
    from pyssondo.segments import cut_segment
    from pyssondo.students import create_student

    src, audio, runs = two_runs
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _files(src)
    names = [p.name for p in load_parents(str(src / "init.pt"), [str(r.path) for r in runs])[1]]
    out = tmp_path / "out" / "merged.pt"
    argv = ["merge", str(src / "init.pt"), str(runs[0].path), str(runs[1].path),
            "--search-unlabeled", str(audio), "--grid", "0:1:0.5",
            "--task-weights", f"{names[0]}=2", "-o", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lambda=0.5,0.5" in printed and "chosen: lambdas" in printed
    # Nothing outside the given folders is written: the runs, BASE, the audio and the
    # fixture's cache are as they were, the working folder stays empty, and the new teacher
    # cache lies next to -o.
    assert _files(src) == before and not any(cwd.iterdir())
    written = sorted(_files(tmp_path / "out"))
    assert {"merged.pt", "merged-search.png"} <= set(written)
    assert all(w in ("merged.pt", "merged-search.png") or w.startswith("cache/")
               for w in written), written

    extra = {"ssondo.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    merge = json.loads(extra["ssondo.json"])["merge"]
    search = merge["search"]
    assert search["measure"] == "knn_agree_backbone" and search["unlabeled"] == str(audio)
    cands = search["candidates"]
    columns = [f"{n}/knn_agree_backbone" for n in names]
    assert search["chance"] == {c: pytest.approx(10 / 15) for c in columns}  # k / (N - 1)
    assert [c["name"] for c in cands] == names + ["lambda=0,1", "lambda=0.5,0.5", "lambda=1,0"]
    assert all(sorted(c["scores"]) == sorted(columns) for c in cands)
    # Lambda (1, 0) is the first parent itself, (0, 1) the second.
    assert cands[4]["scores"] == cands[0]["scores"] and cands[2]["scores"] == cands[1]["scores"]

    # The first parent's own score, recomputed here: its student on each cached segment cut
    # from the decoded file, against the cached teacher rows, by the measure training uses
    # (tested against brute force in test_agreement.py; these 1-epoch students' embeddings lie
    # within 1e-6 of one direction, so another rounding would pick other neighbours).
    cache = EmbeddingCache(next((tmp_path / "out" / "cache").glob("*/*/meta.json")).parent)
    teacher = np.asarray(cache.embeddings(), np.float32)
    student = create_student("mn01", n_mels=64).eval()
    student.load_state_dict(torch.load(runs[0].last, weights_only=True)["student"])
    wavs = []
    for seg in cache.segments():
        wav = load_audio(seg.path, 16000)[0]
        wavs.append(cut_segment(wav, int(round(seg.start * 16000 / seg.file_sr)), 32000))
    with torch.no_grad():
        emb = student(torch.from_numpy(log_mel(np.stack(wavs), MEL))).numpy()
    assert len(wavs) == 16  # 8 clips of 4 s, 2 s windows
    own = knn_agreement(emb, teacher, k=10)
    assert cands[0]["scores"][columns[0]] == pytest.approx(own, abs=1e-12)
    assert cands[1]["scores"][columns[0]] != own  # the other parent scores otherwise

    # The chosen lambda, recomputed from the table: share = score / best parent score per
    # column, weighted mean (first parent's weight 2), ties to the higher lowest share.
    table = np.array([[c["scores"][col] for col in columns] for c in cands])
    best = table[:2].max(axis=0)
    share = table[2:] / best
    value = (2 * share[:, 0] + share[:, 1]) / 3
    order = np.lexsort((-np.arange(len(value)), share.min(axis=1).round(12), value.round(12)))
    assert merge["lambdas"] == cands[2 + order[-1]]["lambdas"]
    assert search["reference"] == dict(zip(columns, best.tolist()))

    # An existing cache is read, not recomputed: the fixture's, built by distill on this audio.
    assert cli.main(argv[:-2] + ["--cache-dir", str(src / "cache"), "-o",
                                 str(tmp_path / "again.pt")]) == 0
    assert _files(src) == before
    extra = {"ssondo.json": ""}
    torch.jit.load(str(tmp_path / "again.pt"), _extra_files=extra)
    again = json.loads(extra["ssondo.json"])["merge"]["search"]["candidates"]
    assert [c["scores"] for c in again] == [c["scores"] for c in cands]


def test_ssondo_merge_search_unlabeled_refusals(two_runs, tmp_path, capsys):
    from run_helpers import write_other_teacher

    src, audio, runs = two_runs
    base, a = str(src / "init.pt"), str(runs[0].path)

    def with_teacher(name, teacher):
        run = tmp_path / name
        shutil.copytree(runs[1].path, run)
        recorded = json.loads((run / "config.json").read_text())
        recorded["teacher"] = str(teacher)
        (run / "config.json").write_text(json.dumps(recorded))
        return str(run)

    gone = with_teacher("moved-run", tmp_path / "gone" / "crepe-tiny.pt")
    other = with_teacher("other-run", write_other_teacher(tmp_path / "other.pt"))
    factory = with_teacher("factory-run", "os.path:join")
    out = str(tmp_path / "out" / "m.pt")
    cases = [
        ([gone], r"moved-run/config.json: teacher \S*gone/crepe-tiny.pt does not exist"),
        ([other], r"other-run/config.json: teacher \S*other.pt has sha256 \w+, but the run was "
                  r"distilled from teacher"),
        ([factory], "teacher 'os.path:join' is a Python factory"),
        ([runs[1].path, "--search", a], "--search and --search-unlabeled exclude each other"),
        ([runs[1].path, "--lambdas", "0.5,0.5"], "--lambdas and --search-unlabeled exclude"),
        ([runs[1].path, "--task-weights", "crepe=2"], "unknown task 'crepe'"),
        ([runs[1].path, "--label-column", "program"], "--label-column, --task and --folds go "
                                                      "with --search"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        argv = ["merge", base, a, str(extra[0]), "--search-unlabeled", str(audio),
                *map(str, extra[1:]), "-o", out]
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert __import__("re").search(message, err), (message, err)
    for argv, message in [
        (["merge", base, a, str(runs[1].path), "--search-unlabeled", str(tmp_path / "nope"),
          "-o", out], "--search-unlabeled .*nope: no such folder"),
        (["merge", base, a, str(runs[1].path), "--cache-dir", str(tmp_path), "-o", out],
         "--cache-dir goes with --search-unlabeled")]:
        capsys.readouterr()
        assert cli.main(argv) == 1
        assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_search_unlabeled_scores_an_ensemble_run_against_each_of_its_teachers(two_runs, tmp_path,
                                                                             one_thread):
    """A parent distilled from two teachers (crepe-tiny and a second TorchScript teacher,
    weights 1 and 3) scores the weighted mean of its agreements with each of them."""
    from run_helpers import write_other_teacher

    from pyssondo.cache import EmbeddingCache
    from pyssondo.evaluation.agreement import knn_agreement
    from pyssondo.merging.agreement import (agreement_candidates, backbone_embeddings,
                                          teacher_files)
    from pyssondo.merging.runs import load_parents
    from pyssondo.students import create_student

    src, audio, runs = two_runs
    other = write_other_teacher(tmp_path / "other.pt")
    cfg = DistillConfig(teacher=[str(src / "crepe-tiny.pt"), str(other)], audio=str(audio),
                        teacher_weights=[1.0, 3.0], teacher_sr=16000, student="mn01", mel=MEL,
                        window_s=2.0,
                        clusters=2, batch_size=4, epochs=1, lr=3e-3, val_fraction=0.25,
                        workers=0, threads=1, seed=3, init=str(src / "init.pt"),
                        cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "runs"),
                        loss="cosine", views=1)
    ensemble = distill(cfg, progress=False, export=False).run
    torch.set_num_threads(1)
    base, parents = load_parents(str(src / "init.pt"), [str(runs[0].path), str(ensemble.path)])
    teachers = [teacher_files(p) for p in parents]
    assert teachers[1] == [str(src / "crepe-tiny.pt"), str(other)]
    candidates, _ = agreement_candidates(parents, base, [(0.5, 0.5)], teachers, str(audio),
                                         tmp_path / "cache")
    caches = sorted((tmp_path / "cache").glob("*/meta.json"))
    assert len(caches) == 2  # distill's caches, read again
    rows = {EmbeddingCache(c.parent).meta["teacher"]["name"]: EmbeddingCache(c.parent)
            for c in caches}
    crepe, second = rows["crepe-tiny"], rows["other"]
    assert crepe.ids == second.ids
    student = create_student("mn01", n_mels=64).eval()
    student.load_state_dict(torch.load(ensemble.last, weights_only=True)["student"])
    emb = backbone_embeddings([student], crepe.segments(), MEL, 2.0)[0]
    each = [knn_agreement(emb, np.asarray(c.embeddings(), np.float32)) for c in (crepe, second)]
    assert each[0] != each[1]  # so the weights matter
    want = (each[0] + 3 * each[1]) / 4
    column = f"{parents[1].name}/knn_agree_backbone"
    assert candidates[1].scores[column] == pytest.approx(want, abs=1e-12)
