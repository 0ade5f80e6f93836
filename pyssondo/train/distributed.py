"""Several processes (``torchrun``): the process group and the few collectives training needs.

``torchrun --nproc_per_node N -m pyssondo distill ...`` starts N copies of the command with
RANK / WORLD_SIZE / LOCAL_RANK in their environment. :func:`process_group` turns that into a
``torch.distributed`` process group (gloo on CPU, nccl on CUDA with device cuda:LOCAL_RANK) for
the duration of the command; without those variables it does nothing and every helper here
is the single-process identity (rank 0 of 1), so a plain ``ssondo distill`` is unchanged.

What the training code uses:

- :func:`world`, :func:`is_main`: who am I.
- :func:`barrier`, :func:`broadcast_object`, :func:`on_main`, :func:`main_first`: rank 0 does
  the file work (teacher cache, k-means labels, log-mel file, run folder, checkpoints, export)
  and the other ranks wait for it, then read what it wrote or receive what it returned.
- :func:`gather_batch`: the global batch from every rank's share, with gradients flowing
  back to each share, so a loss sees the same batch as in one process.
- :func:`all_sum`, :func:`mean_floats`: metrics summed or averaged over ranks.
- :func:`sync_batchnorm`: batch norm computing its statistics over the global batch
  (``torch.nn.SyncBatchNorm`` on CUDA; :class:`GlobalBatchNorm`, a pure-torch equivalent, on
  CPU where torch's has no kernel).
- :func:`wrap`: the model in ``DistributedDataParallel`` (gradients averaged over ranks).
"""
from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, NamedTuple, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("ssondo.train")
T = TypeVar("T")

# Rank 0 may build a teacher cache of a large folder while the others wait at a barrier.
TIMEOUT_ENV = "SSONDO_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int


def launched() -> bool:
    """Whether this process was started by torchrun (WORLD_SIZE in the environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """(rank, size, local rank) of this process; (0, 1, 0) without a process group."""
    if not active():
        return World(0, 1, 0)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and logs."""
    return world().rank == 0


@contextmanager
def process_group(device: str = "cpu") -> Iterator[World]:
    """Initialises the process group of a torchrun launch, yields :func:`world`, destroys it.

    ``device``: the run's --device; "cuda..." uses nccl on cuda:LOCAL_RANK, anything else gloo.
    The timeout (default 24 h, env SSONDO_DIST_TIMEOUT_S in seconds) bounds how long ranks wait
    for rank 0's file work. Ranks other than 0 log warnings and errors only. Without torchrun,
    or when a group exists already (the caller owns it), this does nothing.
    """
    if not launched() or active():
        yield world()
        return
    cuda = str(device).startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                            device_id=torch.device("cuda", local) if cuda else None)
    quiet = logging.getLogger("ssondo")
    level = quiet.level
    if dist.get_rank() > 0:
        quiet.setLevel(logging.WARNING)
    try:
        yield world()
    finally:
        quiet.setLevel(level)
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: cuda:LOCAL_RANK for a CUDA run of several processes."""
    if active() and device.type == "cuda":
        return torch.device("cuda", world().local_rank)
    return device


# ---------------------------------------------------------------------------------------------
# Rank 0 does, the others wait
# ---------------------------------------------------------------------------------------------
def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Runs ``fn`` on rank 0 only and returns its result on every rank."""
    return broadcast_object(fn() if is_main() else None)


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a file); the others run it after (and read)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out: List[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# Numbers across ranks
# ---------------------------------------------------------------------------------------------
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: Sequence[float]) -> List[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def mean_floats(values: Sequence[float]) -> List[float]:
    """Element-wise mean of ``values`` over ranks (identical on every rank)."""
    n = world().size
    return [v / n for v in all_sum(values)]


class _GatherBatch(torch.autograd.Function):
    """Concatenates every rank's [b, ...] along dim 0; backward: the gradient of the sum of
    all ranks' losses with respect to this rank's rows (an all-reduce, then this rank's slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size, _ = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_batch(*tensors: torch.Tensor) -> List[torch.Tensor]:
    """The global batch: every rank's rows of each tensor, in rank order (the same shapes on
    every rank). Gradients flow back to each rank's own rows. Identity in one process.

    With DDP averaging the gradients over N ranks that all compute the same loss L on the
    gathered batch, each parameter gets (1/N) * sum over ranks of dL/dparam via that rank's
    rows = dL/dparam: the gradient of one process training on the whole batch.
    """
    if not active() or world().size == 1:
        return list(tensors)
    return [_GatherBatch.apply(t) for t in tensors]


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) with the sum of the ranks' gradients as backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


# ---------------------------------------------------------------------------------------------
# Batch norm over the global batch, DDP
# ---------------------------------------------------------------------------------------------
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (all ranks), in
    plain torch: the reference behind ``torch.nn.SyncBatchNorm``, which has no CPU kernel.

    Two passes (mean, then the mean squared deviation) over [N, C, ...] inputs, each an
    all-reduce with gradient; the running statistics take the unbiased variance of the global
    batch, exactly as ``BatchNorm`` in one process on that batch. Eval mode (or no process
    group) is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and active() and world().size > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = x.numel() // x.shape[1]
        xf = x.float()
        count = _SumAcrossRanks.apply(torch.tensor([float(local)], dtype=xf.dtype,
                                                   device=x.device))
        mean = _SumAcrossRanks.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _SumAcrossRanks.apply((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(1.0, n - 1)), alpha=m)
        return out.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch norm replaced by one over the global batch (in place for
    children; returns the possibly new root). Parameters are the same objects, buffers are
    copied; a single process gets ``model`` back unchanged."""
    if not active() or world().size == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def _to_global_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) \
            and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child))
    return out


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (several processes) or ``model`` itself."""
    if not active() or world().size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)

