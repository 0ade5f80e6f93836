"""Choosing the lambdas of a task-arithmetic merge by measuring them on labeled data.

The grid (:func:`parse_grid`, :func:`simplex_grid`): lambda values start:stop:step, combined
into every tuple of one lambda per run that sums to 1 (for two runs, (l, 1 - l)).

The choice rule (:func:`shares`, :func:`choose`): every candidate merge and every parent (each
distilled student alone) is scored on the same tasks with the same probes and splits
(:func:`pyssondo.evaluation.evaluate.evaluate`); a column is one (task, probe) pair and a score
its primary metric (accuracy; mAP for multi-label tasks). The reference of a column is the best
parent's score on it. A candidate's share of a column is its score / that reference (1.0 = as
good as the best parent there); its objective is the mean of its shares over the columns,
weighted by per-task weights (default 1 each). The chosen candidate has the highest objective;
ties go to the higher lowest share, then to the earlier candidate in grid order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ParameterError

_DIGITS = 10  # lambdas are rounded to this many decimals, so 0.1 + 0.2 is 0.3


@dataclass
class Candidate:
    """One row of the score table.

    Attributes:
        name: row label ("lambda=0.3,0.7" or a parent's name).
        lambdas: one per run (a parent's are 1 for itself, 0 for the others).
        scores: column ("task" or "task/probe") -> primary metric, in [0, 1].
        parent: True for a parent alone (not a merge).
    """

    name: str
    lambdas: Tuple[float, ...]
    scores: Dict[str, float] = field(default_factory=dict)
    parent: bool = False


def parse_grid(text: str) -> List[float]:
    """``start:stop:step`` -> [start, start + step, ..., <= stop], rounded (e.g. 0:1:0.1 gives
    the 11 values 0, 0.1, ..., 1); a comma-separated list is taken as the values themselves.

    Raises:
        ParameterError: malformed text, step <= 0 or stop < start.
    """
    def bad(why: str) -> ParameterError:
        return ParameterError(f"--grid {text!r}: {why}; expected START:STOP:STEP such as "
                              f"0:1:0.1, or values such as 0,0.5,1")
    try:
        parts = [float(v) for v in text.replace(",", " ").replace(":", " ").split()]
    except ValueError:
        raise bad("not numbers") from None
    if ":" not in text:
        if not parts:
            raise bad("no values")
        return sorted({round(v, _DIGITS) for v in parts})
    if len(parts) != 3:
        raise bad(f"{len(parts)} numbers")
    start, stop, step = parts
    if step <= 0 or stop < start:
        raise bad("step must be > 0 and stop >= start")
    n = int((stop - start) / step + 1e-9)
    return [round(start + i * step, _DIGITS) for i in range(n + 1)]


def simplex_grid(n_runs: int, values: Sequence[float]) -> List[Tuple[float, ...]]:
    """Every tuple of ``n_runs`` lambdas taken from ``values`` that sums to 1, in
    lexicographic order of the leading lambdas (one run: each value alone).

    Raises:
        ParameterError: n_runs < 1, or no tuple of the values sums to 1.
    """
    if n_runs < 1:
        raise ParameterError(f"simplex grid: {n_runs} runs; expected >= 1")
    vals = sorted({round(float(v), _DIGITS) for v in values})
    if n_runs == 1:
        return [(v,) for v in vals]
    known = set(vals)
    out = []
    for lead in itertools.product(vals, repeat=n_runs - 1):
        last = round(1.0 - sum(lead), _DIGITS)
        if last in known:
            out.append(tuple(lead) + (last,))
    if not out:
        raise ParameterError(f"--grid {vals}: no {n_runs} of these values sum to 1; include 0 "
                             f"and 1 (e.g. 0:1:0.1)")
    return out


def references(parents: Sequence[Candidate]) -> Dict[str, float]:
    """Column -> the best parent score on it."""
    cols = parents[0].scores if parents else {}
    return {c: max(p.scores[c] for p in parents) for c in cols}


def column_task(column: str) -> str:
    """The task of a column ("task" or "task/probe")."""
    return column.rsplit("/", 1)[0] if "/" in column else column


def shares(scores: Mapping[str, float], reference: Mapping[str, float]) -> Dict[str, float]:
    """Column -> score / reference (columns whose reference is 0 are left out)."""
    return {c: scores[c] / ref for c, ref in reference.items() if ref > 0}


def objective(scores: Mapping[str, float], reference: Mapping[str, float],
              task_weights: Optional[Mapping[str, float]] = None) -> float:
    """Weighted mean of :func:`shares` over the columns; a column's weight is its task's
    (default 1)."""
    s = shares(scores, reference)
    if not s:  # no parent scored above 0 anywhere: nothing to share, every candidate ties
        return 0.0
    w = {c: float((task_weights or {}).get(column_task(c), 1.0)) for c in s}
    total = sum(w.values())
    if total <= 0:
        raise ParameterError(f"task weights {dict(task_weights or {})}: their sum over the "
                             f"scored tasks must be > 0")
    return sum(w[c] * s[c] for c in s) / total


def choose(candidates: Sequence[Candidate], reference: Mapping[str, float],
           task_weights: Optional[Mapping[str, float]] = None) -> int:
    """Index of the candidate the module docstring's rule picks.

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("merge search: no candidates to choose from")

    def key(i: int):
        s = shares(candidates[i].scores, reference)
        return (round(objective(candidates[i].scores, reference, task_weights), 12),
                round(min(s.values()) if s else 0.0, 12), -i)
    return max(range(len(candidates)), key=key)


def parse_task_weights(text: Optional[str], tasks: Sequence[str]) -> Dict[str, float]:
    """``task=w,task=w`` -> {task: w}; tasks not named weigh 1.

    Raises:
        ParameterError: malformed, negative, or a task that is not one of ``tasks``.
    """
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or w < 0:
            raise ParameterError(f"--task-weights {text!r}: expected TASK=WEIGHT,... with "
                                 f"weights >= 0, such as {tasks[0] if tasks else 'task'}=2")
        if name.strip() not in tasks:
            raise ParameterError(f"--task-weights: unknown task {name.strip()!r}; the tasks are "
                                 f"{', '.join(tasks)}")
        out[name.strip()] = w
    return out


def score_table(report: Dict[str, Any], names: Sequence[str]) -> List[Dict[str, float]]:
    """Per model name (in ``names`` order) the column -> primary-metric mean of an evaluation
    report; columns are "task" with one probe, "task/probe" with several."""
    probes = report["settings"]["probes"]
    out: List[Dict[str, float]] = [{} for _ in names]
    row = {n: i for i, n in enumerate(names)}
    for r in report["results"]:
        if r["model"] in row:
            col = r["task"] if len(probes) == 1 else f"{r['task']}/{r['probe']}"
            out[row[r["model"]]][col] = float(r["metrics"][r["primary"]]["mean"])
    return out


def format_search(candidates: Sequence[Candidate], runs: Sequence[str],
                  reference: Mapping[str, float], chosen: int,
                  task_weights: Optional[Mapping[str, float]] = None) -> str:
    """The score table: one row per candidate, lambdas per run, score per column (percent),
    the objective (mean share, percent); the chosen row is marked with '*'."""
    cols = list(reference)
    header = ["", *[f"l_{r}" for r in runs], *cols, "mean share"]
    rows = []
    for i, c in enumerate(candidates):
        rows.append(["*" + c.name if i == chosen else " " + c.name,
                     *[f"{v:g}" for v in c.lambdas],
                     *[f"{100 * c.scores[k]:.1f}" for k in cols],
                     f"{100 * objective(c.scores, reference, task_weights):.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_search(candidates: Sequence[Candidate], runs: Sequence[str], path, *,
                title: str = "", ylabel: str = "score (primary metric)") -> None:
    """PNG: one line per column against the first run's lambda (two runs) or the candidate's
    position in the grid (more runs), parents as dashed horizontal lines. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_open

    merges = [c for c in candidates if not c.parent]
    parents = [c for c in candidates if c.parent]
    cols = list(merges[0].scores) if merges else []
    two = len(runs) == 2
    x = [c.lambdas[0] for c in merges] if two else list(range(len(merges)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, col in enumerate(cols):
        color = f"C{k}"
        ax.plot(x, [c.scores[col] for c in merges], "o-", color=color, label=col)
        for j, p in enumerate(parents):
            ax.axhline(p.scores[col], color=color, lw=0.8, ls=("--", ":", "-.")[j % 3],
                       label=f"{col}, {p.name} alone")
    if two:
        ax.set_xlabel(f"lambda of {runs[0]} (lambda of {runs[1]} = 1 - it)")
    else:
        ax.set_xticks(x)
        ax.set_xticklabels([",".join(f"{v:g}" for v in c.lambdas) for c in merges],
                           rotation=90, fontsize=6)
        ax.set_xlabel("lambdas (" + ", ".join(runs) + ")")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "merged student per lambda")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
