"""Labeled audio for evaluation: a folder with one sub-folder per class, or a CSV.

CSV layout: a header row, then one row per file. The path column (``path``, else the first
column) holds paths relative to the CSV's folder; the label column (``--label-column``, else
``label``, else the first other column that is not the split column) holds one label, or several separated by ``;`` (the task is
then multi-label); an optional split column (``--split-column``, else ``fold`` when present)
holds fixed folds. Other columns are ignored, so ``fsdd/labels.csv``
(path,digit,speaker,split) serves as a digit task, a speaker task, or either with its split.

Bad rows never stop the run: a path that escapes the CSV's folder, a missing or unreadable file,
a row without a label, a duplicated path and a class with a single example are skipped with a
warning and counted in :attr:`LabeledData.skipped` (the report shows the counts). Only when
nothing usable remains (fewer than two classes with two examples each) is it an error.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..audio import AUDIO_EXTENSIONS, audio_info
from ..errors import AudioError, ParameterError

LABEL_SEPARATOR = ";"
SPLIT_TRAIN, SPLIT_TEST = "train", "test"
SPLIT_VALID = ("valid", "val", "validation", "dev")  # split-column values that mean validation

# Reasons a file is left out, in the order the report lists them.
SKIP_REASONS = ("escapes_folder", "missing", "unreadable", "no_label", "duplicate",
                "single_example_class")


@dataclass(frozen=True)
class Example:
    """One labeled file.

    Attributes:
        key: path relative to the data root, with ``/`` separators (stable id of the file).
        path: absolute path.
        labels: one label (single-label) or several (multi-label), sorted.
        fold: the split-column value, or None.
    """

    key: str
    path: Path
    labels: Tuple[str, ...]
    fold: Optional[str] = None


@dataclass(frozen=True)
class LabeledData:
    """A classification task: the usable examples, the class list, and what was skipped."""

    name: str
    source: str
    examples: Tuple[Example, ...]
    classes: Tuple[str, ...]
    multilabel: bool
    label_column: Optional[str] = None
    split_column: Optional[str] = None
    skipped: Dict[str, int] = field(default_factory=dict)
    skipped_classes: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def keys(self) -> List[str]:
        return [e.key for e in self.examples]

    def label_indices(self) -> np.ndarray:
        """Single-label targets, int64 [N] (index into :attr:`classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[e.labels[0]] for e in self.examples], dtype=np.int64)

    def label_matrix(self) -> np.ndarray:
        """Multi-hot targets, float32 [N, C]."""
        index = {c: i for i, c in enumerate(self.classes)}
        y = np.zeros((len(self.examples), len(self.classes)), dtype=np.float32)
        for n, e in enumerate(self.examples):
            y[n, [index[c] for c in e.labels]] = 1.0
        return y

    def folds(self) -> Optional[List[str]]:
        """The split-column value of every example, or None when there is no split column."""
        return None if self.split_column is None else [e.fold or "" for e in self.examples]

    def without(self, bad_keys: Sequence[str], reason: str) -> "LabeledData":
        """This task without the files in ``bad_keys`` (counted under ``reason``), then with
        classes left with one example removed; raises ValueError if nothing usable remains."""
        bad = set(bad_keys)
        kept = [e for e in self.examples if e.key not in bad]
        skipped = dict(self.skipped)
        if len(kept) < len(self.examples):
            skipped[reason] = skipped.get(reason, 0) + len(self.examples) - len(kept)
        return _finish(replace(self, examples=tuple(kept), skipped=skipped))


def load_labeled(source: os.PathLike, *, name: Optional[str] = None,
                 label_column: Optional[str] = None, split_column: Optional[str] = None,
                 use_fold_column: bool = True, check_audio: bool = True) -> LabeledData:
    """Reads a labeled folder or CSV.

    Args:
        source: a folder with one sub-folder per class (audio found recursively inside each),
            or a ``.csv`` file (see the module docstring).
        name: task name for reports; default: the folder name, or ``<folder>-<label column>``.
        label_column: CSV column holding the labels (CSV only).
        split_column: CSV column holding fixed folds (CSV only). Values ``train``/``test``
            (optionally ``valid``) form one fixed split; any other values are folds used in
            turn as the test part.
        use_fold_column: use a column named ``fold`` when ``split_column`` is not given.
        check_audio: read each file's header and skip files that are not audio.

    Raises:
        FileNotFoundError: ``source`` does not exist. ValueError: unknown column, an empty or
        headerless CSV, or nothing usable left.
    """
    src = Path(source)
    if src.is_dir():
        if label_column or split_column:
            raise ParameterError(f"{src}: --label-column/--split-column apply to CSV files, "
                                 f"not to a folder of class sub-folders")
        data = _from_folder(src, name)
    elif src.is_file() and src.suffix.lower() == ".csv":
        data = _from_csv(src, name, label_column, split_column, use_fold_column)
    elif src.exists():
        raise ParameterError(f"{src}: labeled data must be a folder of class sub-folders "
                             f"or a .csv file")
    else:
        raise FileNotFoundError(f"{src}: no such folder or CSV file")
    if check_audio:
        unreadable = []
        for e in data.examples:
            try:
                info = audio_info(e.path)
                if info.frames == 0:
                    raise AudioError(f"{e.path}: the file holds no samples")
            except AudioError as err:
                warnings.warn(f"{err}; skipped", stacklevel=2)
                unreadable.append(e.key)
        return data.without(unreadable, "unreadable")
    return _finish(data)


def _from_folder(root: Path, name: Optional[str]) -> LabeledData:
    examples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                key = path.relative_to(root).as_posix()
                examples.append(Example(key, path.absolute(), (class_dir.name,)))
    if not examples:
        raise ParameterError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in "
                             f"class sub-folders; expected {root}/<class>/<file>")
    return LabeledData(name=name or root.name, source=str(root), examples=tuple(examples),
                       classes=(), multilabel=False)


def _from_csv(path: Path, name: Optional[str], label_column: Optional[str],
              split_column: Optional[str], use_fold_column: bool) -> LabeledData:
    root = path.parent.absolute()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if len(header) < 2:
        raise ParameterError(f"{path}: expected a header row with at least a path and a label "
                             f"column (path,label[,fold]), got {header!r}")
    col = {h: i for i, h in enumerate(header)}

    def pick(given: Optional[str], default: Optional[str], what: str) -> Optional[int]:
        if given is None:
            return None if default is None else col[default]
        if given not in col:
            raise ParameterError(f"{path}: no {what} column {given!r}; columns: {header}")
        return col[given]

    path_i = col.get("path", 0)
    split_i = pick(split_column, "fold" if "fold" in col and use_fold_column else None, "split")
    others = [h for i, h in enumerate(header) if i not in (path_i, split_i)]
    label_i = pick(label_column, "label" if "label" in col else (others or [header[0]])[0], "label")
    if label_i == path_i or (split_i is not None and split_i in (path_i, label_i)):
        raise ParameterError(f"{path}: the path, label and split columns must differ "
                             f"(got {header[path_i]!r}, {header[label_i]!r}"
                             f"{'' if split_i is None else ', ' + repr(header[split_i])})")
    skipped: Counter = Counter()
    examples, seen = [], set()
    for line, row in enumerate(rows, start=2):
        row = row + [""] * (len(header) - len(row))
        rel = row[path_i].strip()
        full = Path(os.path.normpath(root / rel))
        if not rel or os.path.isabs(rel) or not _inside(full, root):
            warnings.warn(f"{path}:{line}: path {rel!r} is not inside {root}; skipped", stacklevel=3)
            skipped["escapes_folder"] += 1
            continue
        if not full.is_file():
            warnings.warn(f"{path}:{line}: {full} not found; skipped", stacklevel=3)
            skipped["missing"] += 1
            continue
        labels = tuple(sorted({x.strip() for x in row[label_i].split(LABEL_SEPARATOR)} - {""}))
        if not labels:
            warnings.warn(f"{path}:{line}: {rel} has no label; skipped", stacklevel=3)
            skipped["no_label"] += 1
            continue
        key = full.relative_to(root).as_posix()
        if key in seen:
            warnings.warn(f"{path}:{line}: {rel} is listed twice; the later row is skipped",
                          stacklevel=3)
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        fold = row[split_i].strip() if split_i is not None else None
        examples.append(Example(key, full, labels, fold))
    if not examples:
        raise ValueError(f"{path}: no usable rows ({_describe(skipped)})")
    multilabel = any(len(e.labels) > 1 for e in examples)
    label_name = header[label_i]
    return LabeledData(name=name or f"{root.name}-{label_name}", source=str(path),
                       examples=tuple(examples), classes=(), multilabel=multilabel,
                       label_column=label_name,
                       split_column=None if split_i is None else header[split_i],
                       skipped=dict(skipped))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _finish(data: LabeledData) -> LabeledData:
    """Drops classes with fewer than two examples (a class needs one to train and one to
    test), recomputes the class list, and checks that a task remains."""
    counts = Counter(c for e in data.examples for c in e.labels)
    rare = sorted(c for c, n in counts.items() if n < 2)
    examples, skipped = list(data.examples), dict(data.skipped)
    if rare:
        warnings.warn(f"{data.source}: classes with a single example dropped: "
                      f"{', '.join(rare[:10])}{' ...' if len(rare) > 10 else ''}", stacklevel=3)
        kept = []
        for e in examples:
            labels = tuple(c for c in e.labels if c not in rare)
            if labels:
                kept.append(replace(e, labels=labels))
        skipped["single_example_class"] = (skipped.get("single_example_class", 0)
                                           + len(examples) - len(kept))
        examples = kept
    classes = tuple(sorted({c for e in examples for c in e.labels}))
    if len(classes) < 2:
        raise ValueError(f"{data.source}: nothing usable remains: {len(examples)} files in "
                         f"{len(classes)} class(es) with at least two examples each, need two "
                         f"classes ({_describe(skipped)})")
    return replace(data, examples=tuple(examples), classes=classes, skipped=skipped,
                   skipped_classes=tuple(sorted(set(data.skipped_classes) | set(rare))))


def _describe(skipped: Dict[str, int]) -> str:
    parts = [f"{skipped[r]} {r.replace('_', ' ')}" for r in SKIP_REASONS if skipped.get(r)]
    return "skipped: " + ", ".join(parts) if parts else "nothing skipped"
