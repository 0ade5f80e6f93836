"""Presenting an evaluation: the student-versus-teacher comparison, a plain-text table, a
Markdown table, and the JSON file.

Scores are shown in percent as ``mean ± half-width of the 95% CI`` over rounds. The
comparison gives, per task and probe, the student's score as a percentage of the teacher's,
and on average the percentage of the teacher's mean score over tasks (S-SONDO's "keeps 93-96 %
of the teacher's average"), with both parameter counts and their ratio.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..atomic import atomic_write_text
from .metrics import MIN_CI_FOLDS


def _score(report: Dict[str, Any], model: str, task: str, probe: str) -> Optional[float]:
    for r in report["results"]:
        if (r["model"], r["task"], r["probe"]) == (model, task, probe):
            return r["metrics"][r["primary"]]["mean"]
    return None


def compare(report: Dict[str, Any], student: str, teacher: str) -> Dict[str, Any]:
    """Student vs teacher, per probe: per-task primary scores and percentage, the average over
    tasks of each model's score and the student's percentage of the teacher's average, and the
    parameter counts with teacher/student size ratio. Models are named as in ``report``."""
    models = {m["name"]: m for m in report["models"]}
    for name in (student, teacher):
        if name not in models:
            raise ValueError(f"model {name!r} not in the report; have {sorted(models)}")
    probes = report["settings"]["probes"]
    out: Dict[str, Any] = {"student": student, "teacher": teacher, "probes": {}}
    for probe in probes:
        tasks, s_all, t_all = {}, [], []
        for task in (t["name"] for t in report["tasks"]):
            s, t = _score(report, student, task, probe), _score(report, teacher, task, probe)
            tasks[task] = {"student": s, "teacher": t, "percent": _percent(s, t)}
            s_all.append(s)
            t_all.append(t)
        s_avg, t_avg = float(np.mean(s_all)), float(np.mean(t_all))
        out["probes"][probe] = {"tasks": tasks, "average": {
            "student": s_avg, "teacher": t_avg, "percent": _percent(s_avg, t_avg)}}
    sp, tp = models[student]["params"], models[teacher]["params"]
    out["params"] = {"student": sp, "teacher": tp,
                     "size_ratio": (tp / sp) if sp and tp else None}
    return out


def _percent(student: Optional[float], teacher: Optional[float]) -> Optional[float]:
    if student is None or not teacher:
        return None
    return 100.0 * student / teacher


def _cell(result: Dict[str, Any]) -> str:
    m = result["metrics"][result["primary"]]
    if m["ci95"] is not None:
        ci = f" ± {100 * m['ci95']:.1f}"
    elif len(m.get("folds", ())) > 1:
        ci = f" ({len(m['folds'])} folds; CI needs >= {MIN_CI_FOLDS} folds)"
    else:
        ci = ""
    return f"{100 * m['mean']:.1f}{ci}"


def _columns(report: Dict[str, Any]) -> List[tuple]:
    return [(t["name"], p, "mAP" if t["multilabel"] else "acc")
            for t in report["tasks"] for p in report["settings"]["probes"]]


def _rows(report: Dict[str, Any]) -> tuple:
    cols = _columns(report)
    header = ["model", "params"] + [f"{t} {p} {m}" for t, p, m in cols]
    index = {(r["model"], r["task"], r["probe"]): r for r in report["results"]}
    rows = []
    for m in report["models"]:
        rows.append([m["name"], _count(m["params"])]
                    + [_cell(index[(m["name"], t, p)]) for t, p, _ in cols])
    return header, rows


def _count(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(report: Dict[str, Any]) -> str:
    """Plain-text tables: scores (percent, mean ± 95% CI), the data summary, the comparison."""
    header, rows = _rows(report)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for t in report["tasks"]:
        skipped = ", ".join(f"{v} {k}" for k, v in t["skipped"].items() if v) or "none"
        lines.append(f"{t['name']}: {t['files']} files, {t['classes']} classes, {t['protocol']}; "
                     f"skipped: {skipped}")
    if "compare" in report:
        lines.append("")
        lines += _compare_lines(report["compare"])
    return "\n".join(lines)


def _compare_lines(c: Dict[str, Any]) -> List[str]:
    lines = []
    for probe, d in c["probes"].items():
        parts = [f"{task} {_pct(v['percent'])}" for task, v in d["tasks"].items()]
        avg = d["average"]
        lines.append(f"{probe}: student {c['student']} keeps {_pct(avg['percent'])} of teacher "
                     f"{c['teacher']}'s average ({100 * avg['student']:.1f} vs "
                     f"{100 * avg['teacher']:.1f}); per task: {', '.join(parts)}")
    p = c["params"]
    ratio = f", {p['size_ratio']:.1f}x smaller" if p["size_ratio"] else ""
    lines.append(f"parameters: student {_count(p['student'])}, teacher {_count(p['teacher'])}{ratio}")
    return lines


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f}%"


def format_markdown(report: Dict[str, Any]) -> str:
    """The same content as :func:`format_table` as Markdown."""
    header, rows = _rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    lines += ["", "Scores in percent: mean ± half-width of the 95% confidence interval over "
              "rounds (accuracy for single-label tasks, mAP for multi-label ones).", ""]
    lines += ["| task | files | classes | protocol | skipped |", "|---|---|---|---|---|"]
    for t in report["tasks"]:
        skipped = ", ".join(f"{v} {k}" for k, v in t["skipped"].items() if v) or "none"
        lines.append(f"| {t['name']} | {t['files']} | {t['classes']} | {t['protocol']} | {skipped} |")
    if "compare" in report:
        c = report["compare"]
        lines += ["", f"Student `{c['student']}` vs teacher `{c['teacher']}`:", "",
                  "| probe | task | student | teacher | % of teacher |", "|---|---|---|---|---|"]
        for probe, d in c["probes"].items():
            for task, v in list(d["tasks"].items()) + [("**average**", d["average"])]:
                lines.append(f"| {probe} | {task} | {100 * v['student']:.1f} | "
                             f"{100 * v['teacher']:.1f} | {_pct(v['percent'])} |")
        p = c["params"]
        ratio = f" ({p['size_ratio']:.1f}x smaller)" if p["size_ratio"] else ""
        lines += ["", f"Parameters: student {_count(p['student'])}, teacher "
                  f"{_count(p['teacher'])}{ratio}."]
    return "\n".join(lines) + "\n"


def write_json(report: Dict[str, Any], path: Path) -> None:
    """Writes the report as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def write_markdown(report: Dict[str, Any], path: Path) -> None:
    atomic_write_text(path, format_markdown(report))
