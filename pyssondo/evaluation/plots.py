"""2-D views of embeddings, one panel per model, points coloured by label (PNG).

Rows: PCA (numpy SVD of the standardised embeddings) and t-SNE (when scikit-learn is
installed; slow beyond a few thousand points). matplotlib is an optional extra (``pip install ssondo[plot]``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ..atomic import atomic_open
from .probes import standardise


def require_matplotlib() -> None:
    """Raises ValueError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib, which is not installed: "
                         "pip install 'ssondo[plot]' (or pip install matplotlib)") from None


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection of [N, D] onto its two leading principal axes of the standardised data
    (float64 [N, 2]; signs fixed so each axis' largest loading is positive)."""
    (z,) = standardise(x)
    z = z.astype(np.float64)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])
    out = z @ (axes * signs[:, None]).T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of the standardised embeddings (scikit-learn), [N, 2]."""
    from sklearn.manifold import TSNE

    (z,) = standardise(x)
    perplexity = float(min(30, max(2, (len(z) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)


PROJECTIONS = ("pca", "tsne", "both")


def plot_embeddings(embeddings: Dict[str, np.ndarray], labels: Sequence[str], path: Path, *,
                    title: str = "", seed: int = 0, projection: str = "both") -> Path:
    """Saves one PNG with a panel per model.

    Args:
        embeddings: model name -> [N, D], rows aligned with ``labels``.
        labels: one label per row (the first label of a multi-label example).
        path: output PNG.
        projection: "pca", "tsne" or "both" (rows); t-SNE is left out, with a warning, when
            scikit-learn is missing.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if projection not in PROJECTIONS:
        raise ValueError(f"projection {projection!r}: expected one of {PROJECTIONS}")
    methods = [("PCA", pca_2d)] if projection != "tsne" else []
    if projection != "pca":
        try:
            import sklearn  # noqa: F401
            methods.append(("t-SNE", lambda x: tsne_2d(x, seed)))
        except ImportError:
            warnings.warn("t-SNE needs scikit-learn (pip install scikit-learn); plotting PCA only",
                          stacklevel=2)
            methods = methods or [("PCA", pca_2d)]
    classes = sorted(set(labels))
    colour = np.array([classes.index(label) for label in labels])
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    legend = len(classes) <= 20
    width = 4 * len(embeddings) + (1.8 if legend else 0)
    fig, axes = plt.subplots(len(methods), len(embeddings), squeeze=False,
                             figsize=(width, 4 * len(methods) + 0.4))
    for col, (name, x) in enumerate(embeddings.items()):
        for row, (method, fn) in enumerate(methods):
            ax = axes[row, col]
            xy = fn(x)
            ax.scatter(xy[:, 0], xy[:, 1], c=colour % cmap.N, cmap=cmap, vmin=0,
                       vmax=cmap.N - 1, s=8)
            ax.set_title(f"{name} ({method})")
            ax.set_xticks([])
            ax.set_yticks([])
    if legend:
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i % cmap.N), label=c)
                   for i, c in enumerate(classes)]
        fig.legend(handles=handles, loc="center right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - (1.8 / width if legend else 0), 1))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
