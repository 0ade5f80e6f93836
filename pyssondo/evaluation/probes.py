"""Probes on frozen embeddings: a linear classifier (torch) and a cosine kNN (numpy).

Both see the embeddings standardised with the mean and standard deviation of the train part
only. Each probe fits on the train part, chooses its settings on the validation part (the
linear probe: weight decay and epoch count, by early stopping; kNN: k), and only then scores
the test part, once. Single-label tasks use softmax cross-entropy, multi-label tasks
per-class binary cross-entropy.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .config import PROBES, ProbeConfig
from .metrics import classification_metrics, primary_metric

def standardise(train: np.ndarray, *others: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Centres and scales every array with the train part's per-dimension mean and standard
    deviation (a constant dimension becomes 0). Arrays [N, D] -> float32 [N, D]."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, np.inf)
    return tuple(((x - mean) / std).astype(np.float32) for x in (train, *others))


def fit_predict(probe: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                y_val: np.ndarray, x_test: np.ndarray, *, multilabel: bool, n_classes: int,
                seed: int, cfg: ProbeConfig = ProbeConfig()) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Fits ``probe`` ("linear" or "knn") and returns its test scores and chosen settings.

    Args:
        x_*: embeddings [N, D] (raw; standardised here with train statistics).
        y_*: int [N] class indices, or multi-hot float [N, C] when ``multilabel``.
        seed: seeds the linear probe's initialisation and batch order.

    Returns:
        (scores [N_test, C] float32, chosen settings with their validation score).
    """
    x_train, x_val, x_test = standardise(x_train, x_val, x_test)
    if probe == "linear":
        return _linear(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, seed, cfg)
    if probe == "knn":
        return _knn(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, cfg.k_values)
    raise ValueError(f"probe {probe!r}: expected one of {PROBES}")


def _linear(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, seed, cfg):
    import torch

    metric = primary_metric(multilabel)
    xt, xv = torch.from_numpy(x_train), torch.from_numpy(x_val)
    yt = torch.from_numpy(y_train.astype(np.float32 if multilabel else np.int64))
    yv = torch.from_numpy(y_val.astype(np.float32 if multilabel else np.int64))
    loss_fn = (torch.nn.BCEWithLogitsLoss() if multilabel else torch.nn.CrossEntropyLoss())
    best = None  # (val metric, -val loss, state, settings)
    for wd in cfg.weight_decays:
        gen = torch.Generator().manual_seed(seed)
        layer = torch.nn.Linear(xt.shape[1], n_classes)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(xt.shape[1])
            layer.weight.uniform_(-bound, bound, generator=gen)
            layer.bias.zero_()
        opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
        run_best, since = None, 0
        for epoch in range(1, cfg.max_epochs + 1):
            layer.train()
            for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
                loss = loss_fn(layer(xt[idx]), yt[idx]) + wd * layer.weight.pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                logits = layer(xv)
                val_loss = float(loss_fn(logits, yv))
            if run_best is None or val_loss < run_best[1] - 1e-7:
                score = classification_metrics(y_val, logits.numpy(), multilabel)[metric]
                state = {k: v.clone() for k, v in layer.state_dict().items()}
                run_best, since = (score, val_loss, state, epoch), 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
        score, val_loss, state, epoch = run_best
        if best is None or (score, -val_loss) > (best[0], -best[1]):
            best = (score, val_loss, state, {"weight_decay": wd, "epochs": epoch,
                                             f"val_{metric}": score})
    layer.load_state_dict(best[2])
    with torch.no_grad():
        scores = layer(torch.from_numpy(x_test)).numpy()
    return scores.astype(np.float32), best[3]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, k: int,
               multilabel: bool, n_classes: int) -> np.ndarray:
    """Class scores of each query from its ``k`` most cosine-similar train rows.

    Single-label: the vote count of each class, plus 1e-6 x the summed similarity of its
    voters, so ties go to the class whose neighbours are closer. Multi-label: the share of
    neighbours carrying each label, with the same tie-break. Returns float64 [N_query, C].
    """
    sim = _unit(x_query) @ _unit(x_train).T
    k = min(k, len(x_train))
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    near_sim = np.take_along_axis(sim, nn, axis=1).astype(np.float64)
    votes = (np.eye(n_classes)[y_train[nn]] if not multilabel else y_train[nn].astype(np.float64))
    return (votes.sum(axis=1) / (k if multilabel else 1)
            + 1e-6 * np.einsum("qk,qkc->qc", near_sim, votes))


def _knn(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes,
         k_values: Sequence[int]):
    metric = primary_metric(multilabel)
    ks = sorted({k for k in k_values if k <= len(x_train)}) or [len(x_train)]
    best = None
    for k in ks:
        score = classification_metrics(
            y_val, knn_scores(x_train, y_train, x_val, k, multilabel, n_classes), multilabel)[metric]
        if best is None or score > best[0]:
            best = (score, k)
    scores = knn_scores(x_train, y_train, x_test, best[1], multilabel, n_classes)
    return scores.astype(np.float32), {"k": best[1], f"val_{metric}": best[0]}
