"""Static int8 post-training quantisation of a student's convolutions and linears (torch).

:func:`quantize_static` uses torch.ao's FX graph mode (``prepare_fx`` / ``convert_fx``, the
static qconfig mapping of :func:`engine`, x86 on x86 CPUs, with per-channel 7-bit weights and
per-tensor full-range uint8 activations with histogram observers, :func:`_qconfig`) on the
largest sub-modules that FX can trace: a student's own ``forward`` usually starts with an
input-shape check, which FX cannot trace, so its children (MobileNetV3's ``features``,
ERes2Net's stages, ...) are quantised instead, each behind a :class:`ChannelsLast` step, with
concatenations on a common range (:func:`cat_on_common_range`); parts that ``convert_fx``
cannot lower stay float32 (with a warning). Tested on MobileNetV3 and
ERes2Net; DyMN's dynamic convolutions do not survive it (the export then refuses, see
:data:`pyssondo.export.MIN_INT8_AGREEMENT`). The shape checks, poolings and anything
untraceable stay float32. Activation ranges come from calibration log-mel batches
[N, n_mels, frames] run through the float model. The result scripts with ``torch.jit.script``
and runs on CPU; :func:`with_compact_weights` makes the scripted file store each int8 weight
tensor's per-channel scales as float32 and no zero points. torch 2.13 marks
torch.ao.quantization as deprecated (its successor, pt2e with torchao, is not a dependency
here); the deprecation warnings are silenced.

The ONNX counterpart (QDQ, onnxruntime's ``quantize_static``) is in :mod:`pyssondo.onnx_export`;
:mod:`pyssondo.calibration` gathers the calibration data for both.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.ao.quantization.observer import HistogramObserver

def engine() -> str:
    """The torch.backends.quantized engine used: x86 (fbgemm + oneDNN) where this torch build
    has it, else qnnpack (ARM)."""
    return "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"


def quantize_static(model: nn.Module, calibration: Iterable[torch.Tensor], *,
                    float_front: int = 0, kept: Optional[List[str]] = None) -> nn.Module:
    """An int8 copy of ``model`` (float32, eval mode; it is not modified).

    Args:
        model: a module mapping log-mel [N, n_mels, frames] to anything.
        calibration: log-mel batches, float32 [N, n_mels, frames]; the first is also the
            example input that tracing uses. The histogram ranges settle with about 128
            windows (:data:`pyssondo.calibration.DEFAULT_WINDOWS`).
        float_front: how many leading units stay float32 (>= 0). A unit is one item of a
            traced ``nn.Sequential`` (MobileNetV3's and MicroNet's ``features`` blocks) or one
            other traced child, in definition order: trained students are most sensitive to
            rounding in their first layers (:func:`pyssondo.export.quantize_student`).
        kept: when given, the qualified names of the units left float32 are appended to it
            (e.g. ``0.features.0`` for ``model`` = Sequential(backbone, head)).

    Raises:
        ValueError: no calibration batch, or no sub-module could be quantised.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = [b.float() for b in calibration]
    if not batches:
        raise ValueError("int8: no calibration data")
    torch.backends.quantized.engine = engine()
    qconfig = _float_products(get_default_qconfig_mapping(engine()).set_global(_qconfig()))
    model = copy.deepcopy(model).eval()
    if float_front < 0:
        raise ValueError(f"int8: float_front={float_front} must be >= 0")
    inputs = _first_inputs(model, batches[0][:1])
    with warnings.catch_warnings():  # torch 2.13 marks torch.ao.quantization as deprecated
        warnings.simplefilter("ignore")
        prepared = _prepare(model, inputs, lambda m, x: prepare_fx(m, qconfig, example_inputs=x),
                            [float_front], [] if kept is None else kept)
        if not prepared:
            raise ValueError(f"int8: no part of {type(model).__name__} could be traced for "
                             f"quantisation")
        with torch.no_grad():
            for batch in batches:
                model(batch)
        for parent, name, original in prepared:
            try:
                setattr(parent, name, _cats_on_common_range(convert_fx(getattr(parent, name))))
            except Exception as e:  # an op pattern convert_fx cannot lower: keep it float32
                setattr(parent, name, original)
                warnings.warn(f"int8: {type(original).__name__} {name!r} stays float32 "
                              f"({type(e).__name__}: {e})")
    return model


def _cats_on_common_range(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph_module`` with each ``torch.cat`` call replaced by :func:`cat_on_common_range`
    (FX leaves a cat of quantised maps with their own ranges, e.g. ERes2Net's two Res2Net
    branches, to torch's quantised cat)."""
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat_on_common_range
    graph_module.recompile()
    return graph_module


def cat_on_common_range(tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat(tensors, dim)``; quint8 tensors with different (scale, zero point) are first
    requantised to one range that covers all of theirs. torch's quantised cat would use the
    first tensor's range (clipping the others to it) and warn on every call."""
    first = tensors[0]
    if not first.is_quantized or first.dtype != torch.quint8:
        return torch.cat(tensors, dim)
    scales = [t.q_scale() for t in tensors]
    zeros = [t.q_zero_point() for t in tensors]
    if all(s == scales[0] for s in scales) and all(z == zeros[0] for z in zeros):
        return torch.cat(tensors, dim)
    low = min(-z * s for s, z in zip(scales, zeros))  # <= 0 <= high: zero points lie in [0, 255]
    high = max((255 - z) * s for s, z in zip(scales, zeros))
    scale = (high - low) / 255.0
    zero = min(max(int(round(-low / scale)), 0), 255)
    return torch.cat([torch.quantize_per_tensor(t.dequantize(), scale, zero, torch.quint8)
                      for t in tensors], dim)


def _qconfig():
    """Full 8-bit activations (uint8, histogram ranges) and 7-bit per-channel symmetric weights
    (int8 in [-64, 63]). The x86 default has it the other way round (7-bit activations), so
    that fbgemm's u8 x s8 pair sums fit int16 on CPUs without VNNI; 7-bit weights keep that
    bound (255 * 64 * 2 < 32768) and halve the activation rounding, which trained students
    are far more sensitive to (mn04, bench/export.py)."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    return QConfig(activation=FastHistogramObserver.with_args(reduce_range=False),
                   weight=PerChannelMinMaxObserver.with_args(
                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                       quant_min=-64, quant_max=63))


class FastHistogramObserver(HistogramObserver):
    """torch's ``HistogramObserver`` whose range search (``_non_linear_param_search``) takes
    the same steps on Python floats and numpy instead of one 0-dim tensor operation per step.

    The search narrows [min, max] by quantiles in steps of 1e-5 until the quantisation error
    grows; a histogram whose mass sits in one bin (a constant or dead activation) never stops
    it early, so torch walks all 100,000 steps: 0.12 s per observer, 40 of the 45 s that the
    int8 export of a MicroNet-m0 spent (340 observers), 0.4 s here. The thresholds are
    rounded to float32 as torch's comparison of a float32 tensor with a Python float rounds
    them, the quantisation error is torch's own function, so the ranges are torch's, bit for
    bit (a test compares both on ordinary and degenerate histograms).
    """

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.histogram.size()[0] != self.bins:
            raise AssertionError("bins mismatch")
        bin_width = (self.max_val - self.min_val) / self.bins
        total = torch.sum(self.histogram).item()
        c_sum = torch.cumsum(self.histogram, dim=0).tolist()  # the float32 values, exactly
        alpha, beta, step = 0.0, 1.0, 1e-5  # the quantile bounds
        start_bin, end_bin = 0, self.bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha, next_beta = alpha + step, beta - step
            low, high = _float32(next_alpha * total), _float32(next_beta * total)
            left, right = start_bin, end_bin
            while left < end_bin and c_sum[left] < low:
                left += 1
            while right > start_bin and c_sum[right] > high:
                right -= 1
            if left == start_bin and right == end_bin:  # neither bin moves: beta steps on
                top = c_sum[end_bin] if end_bin > start_bin else float("-inf")
                beta = _stalled_beta(alpha, next_beta, step, total, top)
                continue
            if left - start_bin > end_bin - right:
                alpha, next_end_bin, next_start_bin = next_alpha, end_bin, left
            else:
                beta, next_end_bin, next_start_bin = next_beta, right, start_bin
            if next_start_bin == start_bin and next_end_bin == end_bin:
                continue
            norm = self._compute_quantization_error(next_start_bin, next_end_bin)
            if norm > norm_min:
                break
            norm_min = norm
            start_bin, end_bin = next_start_bin, next_end_bin
        return self.min_val + bin_width * start_bin, self.min_val + bin_width * (end_bin + 1)


def _float32(x: float) -> float:
    return float(np.float32(x))


def _stalled_beta(alpha: float, beta: float, step: float, total: float, top: float,
                  chunk: int = 4096) -> float:
    """The upper quantile bound after the steps of :class:`FastHistogramObserver`'s search in
    which neither bin moves: ``beta -= step`` (sequential doubles, as numpy's accumulate
    computes them) while ``alpha < beta`` and the end bin's cumulative count ``top`` stays
    <= the float32 of ``(beta - step) * total``."""
    while True:
        betas = np.add.accumulate(np.concatenate([[beta], np.full(chunk, -step)]))
        stop = (betas[:-1] <= alpha) | (top > (betas[1:] * total).astype(np.float32))
        first = np.flatnonzero(stop)
        if first.size:
            return float(betas[first[0]])
        beta = float(betas[-1])


def _float_products(mapping):
    """``mapping`` with tensor-by-tensor products left float32 (dequantize, multiply,
    quantize): squeeze-excitation's ``x * scale[:, :, None, None]`` as fbgemm's
    ``quantized::mul`` broadcasts over a channels-last map runs 7x slower than that round trip
    (mn04 at 10 s, [1, 48, 16, 78] x [1, 48, 1, 1]: 140 vs 19 us, 1 thread), with the same
    result (``bench/export.py`` prints the int8 latency)."""
    return mapping.set_object_type(operator.mul, None).set_object_type(torch.mul, None)


def _first_inputs(model: nn.Module, x: torch.Tensor) -> Dict[nn.Module, Tuple]:
    """Each sub-module's positional inputs on its first call during ``model(x)``."""
    seen: Dict[nn.Module, Tuple] = {}

    def record(mod: nn.Module, args: Tuple) -> None:  # returns None: the inputs stay as they are
        seen.setdefault(mod, args)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _prepare(module: nn.Module, inputs: Dict[nn.Module, Tuple], prepare, front: List[int],
             kept: List[str], prefix: str = "") -> List[Tuple[nn.Module, str, nn.Module]]:
    """Replaces, depth first, each child that traces with its prepared (observed) version;
    recurses into the children that do not. ``front[0]`` leading units (see
    :func:`quantize_static`) are left float32, counted down and their names appended to
    ``kept``. Returns (parent, attribute, original child) of each replacement."""
    done: List[Tuple[nn.Module, str, nn.Module]] = []
    for name, child in list(module.named_children()):
        path = prefix + name
        if child not in inputs or not _has_weights(child):
            continue
        try:  # on a copy: a failed trace may have fused parts of what it was given
            prepared = prepare(copy.deepcopy(child), inputs[child])
        except Exception:  # untraceable control flow: quantise its parts instead
            done += _prepare(child, inputs, prepare, front, kept, path + ".")
            continue
        units = len(child) if isinstance(child, nn.Sequential) else 1
        keep = min(front[0], units)
        front[0] -= keep
        if isinstance(child, nn.Sequential):
            kept += [f"{path}.{i}" for i in range(keep)]
        elif keep:
            kept.append(path)
        if keep == units:
            continue  # all of it stays float32
        front_units: List[nn.Module] = []
        if keep:  # a float32 front, then the prepared rest
            front_units, original = list(child[:keep]), child[keep:]
            prepared = prepare(copy.deepcopy(original), inputs[child[keep]])
        elif len(inputs[child]) > 1:  # not a Sequential's single input: replaced as it is
            setattr(module, name, prepared)
            done.append((module, name, child))
            continue
        else:
            original = child
        wrapper = nn.Sequential(*front_units, ChannelsLast(), prepared)
        setattr(module, name, wrapper)
        done.append((wrapper, str(keep + 1), original))
    return done


class ChannelsLast(nn.Module):
    """Feature maps [N, C, H, W] to channels-last memory, other tensors as they are (a no-op
    for maps already channels-last or with C = 1). Put before each quantised part: its
    quantised convolutions return channels-last maps, and fbgemm's ``quantized::add`` of a
    residual that entered in contiguous (float32-front) memory and a channels-last one takes
    a slow path (mn04 with its first block float32: 1.5 of 10 ms on one [1, 8, 64, 312] add)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def with_compact_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (a :func:`quantize_static` result) to script: each quantised
    convolution and linear whose int8 weights have per-channel scales that are float32 values
    and zero points that are all 0 (:func:`_qconfig`'s symmetric weights) becomes a subclass
    whose ``__getstate__`` / ``__setstate__`` (:class:`_CompactConv`,
    :class:`_CompactLinearWeights`), which TorchScript saves and loads through, store the int8
    values and float32 scales. torch's own state holds a quantised tensor, whose scales it
    stores as float64 and zero points as int64: 16 bytes per output channel, 112 KB of
    mn04's 838 KB int8 file. Same results, bit for bit; for ``torch.jit.script`` only (its
    linears' weights do not deep-copy)."""
    from torch.ao.nn.quantized.modules.conv import _ConvNd
    from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, _ConvNd):
            mixin = _CompactConv
        elif isinstance(module, LinearPackedParams) and module.dtype == torch.qint8:
            mixin = _CompactLinearWeights
        else:
            continue
        if _compact_holds(module._weight_bias()[0]):
            cls = type(module)
            if cls not in _COMPACT_CLASSES:
                _COMPACT_CLASSES[cls] = type(f"Compact{cls.__name__}", (mixin, cls),
                                             {"__module__": __name__})
            module.__class__ = _COMPACT_CLASSES[cls]
    return model


_COMPACT_CLASSES: Dict[type, type] = {}  # torch's quantised class -> its compact subclass


def _compact_holds(weight: torch.Tensor) -> bool:
    """Whether float32 scales and no zero points hold ``weight`` exactly (per-channel along
    the output channels, float32 scales, zero points 0)."""
    if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
        return False
    scales = weight.q_per_channel_scales()
    return (weight.q_per_channel_axis() == 0 and bool((scales.float().double() == scales).all())
            and not bool(weight.q_per_channel_zero_points().any()))


def _per_channel_weight(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The per-channel int8 tensor of int8 ``values`` [out, ...] and float32 ``scales``
    [out] (zero points 0)."""
    return torch._make_per_channel_quantized_tensor(
        values, scales.double(), torch.zeros(scales.shape, dtype=torch.long), 0)


class _CompactConv:
    """Mixed into torch's quantised convolutions (:func:`with_compact_weights`): their
    ``__getstate__`` / ``__setstate__`` with the weight as int8 values and float32 scales."""

    @torch.jit.export
    def __getstate__(self):
        w, b = self._weight_bias()
        return (self.in_channels, self.out_channels, self.kernel_size, self.stride,
                self.padding, self.dilation, self.transposed, self.output_padding, self.groups,
                self.padding_mode, w.int_repr(), w.q_per_channel_scales().float(), b,
                self.scale, self.zero_point, self.training)

    @torch.jit.export
    def __setstate__(self, state):
        self.in_channels = state[0]
        self.out_channels = state[1]
        self.kernel_size = state[2]
        self.stride = state[3]
        self.padding = state[4]
        self.dilation = state[5]
        self.transposed = state[6]
        self.output_padding = state[7]
        self.groups = state[8]
        self.padding_mode = state[9]
        self.set_weight_bias(_per_channel_weight(state[10], state[11]), state[12])
        self.scale = state[13]
        self.zero_point = state[14]
        self.training = state[15]


class _CompactLinearWeights:
    """Mixed into torch's quantised linears' weight holder (``LinearPackedParams``, which
    TorchScript otherwise saves through its packed weights' own pickling): int8 values and
    float32 scales."""

    @torch.jit.export
    def __getstate__(self):
        w, b = self._weight_bias()
        return (w.int_repr(), w.q_per_channel_scales().float(), b, self.training)

    @torch.jit.export
    def __setstate__(self, state):
        self.dtype = torch.qint8
        self.set_weight_bias(_per_channel_weight(state[0], state[1]), state[2])
        self.training = state[3]


def _has_weights(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in module.modules())
