"""Evaluation settings in one place: the library's defaults are the CLI's defaults.

Standard library only, so ``ssondo eval --help`` can show them without importing numpy/torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Tuple

PROBES = ("linear", "knn")


@dataclass(frozen=True)
class ProbeConfig:
    """Probe settings.

    Attributes:
        weight_decays: L2 penalties tried by the linear probe (coefficient of sum(W^2)).
        lr: Adam learning rate.
        batch_size: training mini-batch size.
        max_epochs: upper bound on training epochs.
        patience: epochs without a lower validation loss before stopping.
        k_values: neighbour counts tried by kNN (those above the train size are skipped).
    """

    weight_decays: Tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
    lr: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    k_values: Tuple[int, ...] = (1, 3, 5, 10, 20)


@dataclass(frozen=True)
class EvalConfig:
    """Protocol settings.

    Attributes:
        folds: k of stratified k-fold, used for tasks without a split column.
        seed: seeds the folds, the validation carving and the probes.
        val_fraction: share of each round's training files used for validation.
        probes: probes to run, among :data:`PROBES`.
        window_s: window length in seconds for long files.
        batch_size: windows per model call.
        probe: the probes' own settings.
    """

    folds: int = 5
    seed: int = 0
    val_fraction: float = 0.2
    probes: Sequence[str] = PROBES
    window_s: float = 10.0
    batch_size: int = 16
    probe: ProbeConfig = field(default_factory=ProbeConfig)
