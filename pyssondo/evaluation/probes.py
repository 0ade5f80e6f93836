"""Probes on frozen embeddings: a linear classifier (torch) and a cosine kNN (numpy).

Both see the embeddings standardised with the mean and standard deviation of the train part
only. Each probe fits on the train part, chooses its settings on the validation part (the
linear probe: weight decay and epoch count, by early stopping; kNN: k), and only then scores
the test part, once. Single-label tasks use softmax cross-entropy, multi-label tasks
per-class binary cross-entropy.
"""
from __future__ import annotations

import contextlib
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
        with _one_torch_thread():
            return _linear(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, seed, cfg)
    if probe == "knn":
        return _knn(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, cfg.k_values)
    raise ValueError(f"probe {probe!r}: expected one of {PROBES}")


@contextlib.contextmanager
def _one_torch_thread():
    """Runs the block with one torch thread: a probe's tiny matrix products only lose time to
    thread synchronisation (10x slower with 2 threads on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _linear(x_train, y_train, x_val, y_val, x_test, multilabel, n_classes, seed, cfg):
    """Trains one linear layer per weight decay at once: the weights are stacked [G, D, C]
    and the loss is the sum of the G independent losses, so Adam (element-wise) updates each
    exactly as if trained alone. Each keeps the state of its lowest validation loss and stops
    after ``patience`` epochs without improvement; the weight decay with the best validation
    metric (ties: lower validation loss) is then scored on the test part."""
    import torch

    metric = primary_metric(multilabel)
    wds = torch.tensor(cfg.weight_decays, dtype=torch.float32)
    g_count, dim = len(wds), x_train.shape[1]
    xt, xv = torch.from_numpy(x_train), torch.from_numpy(x_val)
    if multilabel:
        yt, yv = torch.from_numpy(y_train.astype(np.float32)), torch.from_numpy(y_val.astype(np.float32))
    else:
        yt, yv = torch.from_numpy(y_train.astype(np.int64)), torch.from_numpy(y_val.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / np.sqrt(dim)
    weight = (torch.rand(dim, n_classes, generator=gen) * 2 - 1).mul_(bound)
    weight = weight.expand(g_count, dim, n_classes).clone().requires_grad_(True)
    bias = torch.zeros(g_count, 1, n_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=cfg.lr)

    def losses(x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        logits = torch.matmul(x, weight) + bias  # [G, N, C]
        if multilabel:
            per = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y.expand_as(logits), reduction="none").mean(dim=(1, 2))
        else:
            per = torch.nn.functional.cross_entropy(
                logits.reshape(-1, n_classes), y.repeat(g_count), reduction="none"
            ).reshape(g_count, -1).mean(dim=1)
        return per

    best_loss = torch.full((g_count,), float("inf"))
    best_epoch = torch.zeros(g_count, dtype=torch.long)
    best_w, best_b = weight.detach().clone(), bias.detach().clone()
    for epoch in range(1, cfg.max_epochs + 1):
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            loss = (losses(xt[idx], yt[idx]) + wds * weight.pow(2).sum(dim=(1, 2))).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = losses(xv, yv)
            better = val < best_loss - 1e-7
            best_loss = torch.where(better, val, best_loss)
            best_epoch[better] = epoch
            best_w[better] = weight[better]
            best_b[better] = bias[better]
        if bool((epoch - best_epoch >= cfg.patience).all()):
            break
    with torch.no_grad():
        val_logits = (torch.matmul(xv, best_w) + best_b).numpy()
        test_logits = (torch.matmul(torch.from_numpy(x_test), best_w) + best_b).numpy()
    scores = [classification_metrics(y_val, val_logits[g], multilabel)[metric]
              for g in range(g_count)]
    g = max(range(g_count), key=lambda i: (scores[i], -float(best_loss[i])))
    chosen = {"weight_decay": float(cfg.weight_decays[g]), "epochs": int(best_epoch[g]),
              f"val_{metric}": scores[g]}
    return test_logits[g].astype(np.float32), chosen


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
