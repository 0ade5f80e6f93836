"""Balanced Data Sampling (BDS): draw segments with probability proportional to |cluster|^-alpha.

- :class:`BalancedSampler`: an index sampler (a ``torch.utils.data.DataLoader`` ``sampler=``
  without importing torch here) drawing with replacement; reproducible from its seed,
  resumable from ``state_dict()``, shardable across ranks.
- :class:`StratifiedSampler`: batches that mix two sets in fixed proportions (continual
  adaptation: replayed old data + new data), each part drawn with BDS over its own clusters.
- :func:`effective_balance`: how balanced the expected draws over clusters are.

The cluster ids come from :mod:`pyssondo.clustering` (k-means, stored next to the data).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Tuple

import numpy as np

from .errors import ParameterError

_CHUNK = 1 << 16  # draws per independently seeded chunk of a global stream


def _cluster_sizes(cluster_ids: np.ndarray) -> np.ndarray:
    return np.bincount(cluster_ids).astype(np.int64)


def _check_ids(cluster_ids) -> np.ndarray:
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ParameterError(f"cluster_ids must be a non-empty 1-D array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ParameterError(f"cluster_ids must be integers, got {ids.dtype}")
    if ids.min() < 0:
        raise ParameterError(f"cluster_ids must be >= 0, got {int(ids.min())} "
                             f"at index {int(np.argmin(ids))}")
    return ids.astype(np.int64, copy=False)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ParameterError(f"alpha must be a finite number >= 0, got {alpha}")
    return alpha


def effective_balance(cluster_ids, alpha: float = 1.0) -> Dict[str, Any]:
    """Expected share of draws per cluster under weights |cluster|^-alpha, and its balance.

    Returns a dict: ``share`` float64 [max id + 1] (expected fraction of draws landing in each
    cluster; 0 for empty ids), ``num_clusters`` (non-empty), ``entropy_ratio`` = H(share) /
    log(num_clusters) (1 = every cluster drawn equally often), ``effective_clusters`` =
    exp(H(share)), ``max_over_min`` (largest / smallest non-zero share).
    """
    sizes = _cluster_sizes(_check_ids(cluster_ids)).astype(np.float64)
    alpha = _check_alpha(alpha)
    mass = np.where(sizes > 0, sizes ** (1.0 - alpha), 0.0)  # |c| * |c|^-alpha
    share = mass / mass.sum()
    nz = share[share > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    k = int(nz.size)
    return {
        "share": share,
        "num_clusters": k,
        "entropy_ratio": entropy / math.log(k) if k > 1 else 1.0,
        "effective_clusters": math.exp(entropy),
        "max_over_min": float(nz.max() / nz.min()),
    }


class _EpochStream:
    """Epoch and position bookkeeping of the samplers: ``len()`` items per epoch, produced by
    ``_draws(epoch, start)`` (the epoch's items from position ``start`` on); ``_STATE`` names
    the settings a state dict records, ``_MUST_MATCH`` those a resumed sampler must share."""

    _STATE: Tuple[str, ...] = ()
    _MUST_MATCH: Tuple[str, ...] = ()
    epoch: int
    position: int  # items of this epoch already handed out

    def __len__(self) -> int:
        raise NotImplementedError

    def _draws(self, epoch: int, start: int) -> Iterator[int]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its beginning; when ``epoch`` is the current epoch and it
        is partly consumed (as after :meth:`load_state_dict`), continues from the position."""
        if int(epoch) < 0:
            raise ParameterError(f"epoch must be >= 0, got {epoch}")
        if int(epoch) != self.epoch or self.position >= len(self):
            self.epoch = int(epoch)
            self.position = 0

    def __iter__(self) -> Iterator[int]:
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        epoch = self.epoch
        for v in self._draws(epoch, self.position):
            if self.epoch != epoch:
                return
            self.position += 1
            yield v

    def state_dict(self) -> Dict[str, Any]:
        """Position (epoch, items handed out) plus the settings it is only valid with."""
        return {"epoch": self.epoch, "position": self.position,
                **{key: getattr(self, key) for key in self._STATE}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continues the stream saved by :meth:`state_dict` (the settings must match)."""
        for key in self._MUST_MATCH:
            if key in state and state[key] != getattr(self, key):
                raise ParameterError(f"sampler state has {key}={state[key]!r} but this sampler "
                                     f"has {key}={getattr(self, key)!r}; resume with the same "
                                     "data and settings")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ParameterError(f"sampler state position must be in [0, {len(self)}], "
                                 f"got {position}")
        self.epoch = int(state["epoch"])
        self.position = position


class BalancedSampler(_EpochStream):
    """Indices 0..N-1 drawn with replacement with probability proportional to
    ``|cluster(i)|^-alpha`` (alpha = 0: uniform over items; 1: S-SONDO, every cluster equally
    often).

    Each epoch is one global stream of ``ceil(num_samples / world_size) * world_size`` draws,
    a pure function of (seed, epoch) generated in independently seeded chunks; rank ``r`` takes
    the global positions ``r, r + world_size, r + 2 world_size, ...``, so ranks draw disjoint
    parts of the same stream and their union is the global stream. ``len(sampler)`` is the
    per-rank count per epoch.

    Iterating yields Python ints from the current position and advances it, so
    ``state_dict()`` taken after consuming j items and loaded into a new sampler continues with
    item j + 1 of the same stream. (With DataLoader workers the sampler runs ahead of the
    batches actually trained; a trainer that needs the exact position should store the
    number of consumed samples and pass it to ``load_state_dict``.) When an epoch is exhausted
    the next ``iter()`` moves to the next epoch; ``set_epoch(e)`` jumps to the start of epoch
    e (but continues a partly consumed current epoch, as after a resume). A state dict
    resumes on any rank: every rank is at the same position.
    """

    _STATE = ("seed", "alpha", "num_samples", "world_size", "rank", "num_items")
    _MUST_MATCH = ("seed", "alpha", "num_samples", "world_size", "num_items")

    def __init__(self, cluster_ids, num_samples: int, alpha: float = 1.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        ids = _check_ids(cluster_ids)
        if int(num_samples) < 1:
            raise ParameterError(f"num_samples must be >= 1, got {num_samples}")
        if int(world_size) < 1:
            raise ParameterError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ParameterError(f"rank must be in [0, {int(world_size) - 1}], got {rank}")
        if int(seed) < 0:
            raise ParameterError(f"seed must be >= 0, got {seed}")
        self.alpha = _check_alpha(alpha)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_samples = int(num_samples)
        self.num_items = int(ids.size)
        self.cluster_ids = ids
        sizes = _cluster_sizes(ids).astype(np.float64)
        weights = sizes[ids] ** -self.alpha
        cdf = np.cumsum(weights / weights.sum())
        cdf[-1] = 1.0
        self._cdf = cdf
        self.per_rank = -(-self.num_samples // self.world_size)
        self.epoch = 0
        self.position = 0  # items of this epoch already handed out by this rank

    @property
    def probabilities(self) -> np.ndarray:
        """Draw probability of each item, float64 [N]."""
        return np.diff(self._cdf, prepend=0.0)

    def effective_balance(self) -> Dict[str, Any]:
        """:func:`effective_balance` of this sampler's clusters and alpha."""
        return effective_balance(self.cluster_ids, self.alpha)

    def __len__(self) -> int:
        return self.per_rank

    def _chunk(self, epoch: int, c: int) -> np.ndarray:
        u = np.random.default_rng([self.seed, epoch, c]).random(_CHUNK)
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.num_items - 1)

    def global_stream(self, epoch: int) -> np.ndarray:
        """All draws of an epoch across ranks, int64 [per_rank * world_size] (for checks)."""
        total = self.per_rank * self.world_size
        chunks = [self._chunk(epoch, c) for c in range(-(-total // _CHUNK))]
        return np.concatenate(chunks)[:total]

    def _draws(self, epoch: int, start: int) -> Iterator[int]:
        position = start
        while position < self.per_rank:
            g = self.rank + self.world_size * position
            c = g // _CHUNK
            # This rank's positions inside chunk c, from the current one on.
            offsets = np.arange(g - c * _CHUNK, _CHUNK, self.world_size)
            offsets = offsets[: self.per_rank - position]
            position += offsets.size
            yield from self._chunk(epoch, c)[offsets].tolist()


def _part_seed(seed: int, part: int) -> int:
    """Independent seed of one part of a stratified stream."""
    return int(np.random.SeedSequence([int(seed), int(part)]).generate_state(1)[0])


class StratifiedSampler(_EpochStream):
    """Batches mixing set A (e.g. replayed old data) and set B (new data) in fixed numbers.

    Items are indices into the concatenation [A | B]: ``0 .. len(ids_a) - 1`` are A's items,
    ``len(ids_a) ..`` B's. Every batch of ``batch_size`` items holds
    ``n_a = floor(fraction_a * batch_size + 0.5)`` draws from A followed by
    ``n_b = batch_size - n_a`` draws from B. Each part is the stream of a
    :class:`BalancedSampler` over that part's own cluster ids (probability proportional to
    ``|cluster|^-alpha`` within the part, with replacement), seeded from ``(seed, part)``, so an
    epoch is a pure function of (seed, epoch) and the two parts draw independently.

    The interface is :class:`BalancedSampler`'s (single rank): iterating yields the epoch's
    items from the current position and advances it; ``state_dict()`` /
    ``load_state_dict()`` resume at any position; ``set_epoch(e)`` starts epoch e (or
    continues it when partly consumed); ``len()`` = ``batches * batch_size`` per epoch.
    """

    _STATE = _MUST_MATCH = ("seed", "alpha", "batch_size", "batches", "n_a", "num_a", "num_b")

    def __init__(self, ids_a, ids_b, batch_size: int, batches: int, fraction_a: float,
                 alpha: float = 1.0, seed: int = 0) -> None:
        fraction_a = float(fraction_a)
        if not 0.0 <= fraction_a <= 1.0:
            raise ParameterError(f"fraction_a must be in [0, 1], got {fraction_a}")
        if int(batch_size) < 1 or int(batches) < 1:
            raise ParameterError(f"batch_size and batches must be >= 1, got {batch_size}, "
                                 f"{batches}")
        if int(seed) < 0:
            raise ParameterError(f"seed must be >= 0, got {seed}")
        self.batch_size, self.batches = int(batch_size), int(batches)
        self.n_a = int(math.floor(fraction_a * self.batch_size + 0.5))
        self.n_b = self.batch_size - self.n_a
        self.seed, self.alpha = int(seed), _check_alpha(alpha)
        self.num_a, self.num_b = int(np.asarray(ids_a).size), int(np.asarray(ids_b).size)
        self._parts = []
        for part, (ids, n) in enumerate(((ids_a, self.n_a), (ids_b, self.n_b))):
            if n and not np.asarray(ids).size:
                raise ParameterError(f"set {'AB'[part]} is empty but every batch draws {n} "
                                     f"items from it")
            self._parts.append(BalancedSampler(ids, n * self.batches, self.alpha,
                                               _part_seed(self.seed, part)) if n else None)
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All items of an epoch in order, int64 [batches * batch_size]."""
        order = np.empty((self.batches, self.batch_size), dtype=np.int64)
        a, b = self._parts
        if a is not None:
            order[:, :self.n_a] = a.global_stream(epoch).reshape(self.batches, self.n_a)
        if b is not None:
            order[:, self.n_a:] = self.num_a + b.global_stream(epoch).reshape(self.batches,
                                                                              self.n_b)
        return order.reshape(-1)

    def _draws(self, epoch: int, start: int) -> Iterator[int]:
        yield from self.epoch_order(epoch)[start:].tolist()
