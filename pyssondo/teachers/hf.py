"""Hugging Face ``transformers`` audio encoders as teachers, read from a local snapshot.

``build_hf_teacher_file("hf:PATH_OR_ID", out, layers=..., pool=...)`` loads the model and its
feature extractor from a snapshot folder (or the local Hugging Face cache; never the network)
and writes a teacher file mapping a float32 waveform [B, T] at the feature extractor's
``sampling_rate`` to the hidden states of the chosen layers: [B, F, L*D] frames, or [B, L*D]
averaged over the frames (``pool="mean"``). The model's own input normalisation and feature
extraction run inside, in torch (:mod:`.hf_frontends`).

Layers: ``hidden_states[k]`` of the ``transformers`` model, so 0 is the encoder's input
embedding and k (1..N) the output of its k-th block (CLAP: of its k-th Swin stage, as tokens).
Each target is one layer or the mean of a range of layers; several targets are concatenated on
the last axis in order and listed in the metadata as
``"targets": [{"name": "layer4", "dim": 768}, ...]`` (:func:`pyssondo.loading.teacher_targets`).

File formats:
- "torchscript" (preferred): the front end and pooling scripted around the ``transformers``
  model traced on features; checked against the eager model at build time on several input
  lengths and batch sizes, so any length works.
- "state", where tracing fails or disagrees: a zip of ``ssondo.json``, ``config.json``,
  ``preprocessor_config.json`` and ``model.safetensors`` that :func:`load_state_teacher`
  rebuilds with ``transformers`` (needed at cache time then); no pickle, no Python code.

Per architecture (``model_type`` in ``config.json``): wav2vec2, hubert, wavlm (waveform,
optional per-clip normalisation; frames every 320 samples), whisper (encoder only; every input
padded to 30 s as Whisper does, output trimmed to the frames that cover the input), AST
(``audio-spectrogram-transformer``: fixed ``max_length`` fbank frames; tokens are the 2 class
tokens then the time-frequency patches), clap (audio tower; inputs repeat-padded or truncated
to its clip length; tokens of the Swin stage).
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ParameterError

PathLike = Union[str, "os.PathLike[str]"]
PREFIX = "hf:"
FORMATS = ("auto", "torchscript", "state")
POOLS = ("mean", "none")
STATE_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
# model_type -> (config key holding the block count, description)
SUPPORTED: Dict[str, Tuple[str, str]] = {
    "wav2vec2": ("num_hidden_layers", "wav2vec 2.0"),
    "hubert": ("num_hidden_layers", "HuBERT"),
    "wavlm": ("num_hidden_layers", "WavLM"),
    "whisper": ("encoder_layers", "Whisper encoder"),
    "audio-spectrogram-transformer": ("num_hidden_layers", "AST"),
    "clap": ("depths", "CLAP audio model"),
}
CHECK_SECONDS = (0.37, 1.0, 2.3)  # input lengths the traced teacher is compared on at build
CHECK_TOLERANCE = 1e-4


def is_hf_spec(spec: str) -> bool:
    """True for ``hf:PATH_OR_ID``."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class Target:
    """One teacher target: the mean of hidden states ``layers`` (one index for one layer)."""

    name: str
    layers: Tuple[int, ...]


def parse_targets(layer: Optional[int] = None, layers: Optional[str] = None,
                  layer_mean: Optional[str] = None) -> List[Target]:
    """The targets of ``--layer N``, ``--layers a,b,c`` or ``--layer-mean a:b`` (at most one
    given; none means the last layer, written as index -1 until the model is known).

    Raises:
        ParameterError: more than one given, or a malformed or negative index.
    """
    given = [x for x in (layer, layers, layer_mean) if x is not None]
    if len(given) > 1:
        raise ParameterError("hf teacher: give only one of --layer, --layers, --layer-mean")
    if layer is not None:
        return [Target(f"layer{_index(layer)}", (_index(layer),))]
    if layers is not None:
        idx = [_index(x) for x in str(layers).split(",")]
        if len(set(idx)) != len(idx):
            raise ParameterError(f"hf teacher: --layers {layers!r} repeats a layer")
        return [Target(f"layer{i}", (i,)) for i in idx]
    if layer_mean is not None:
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(layer_mean))
        if not m or int(m.group(1)) > int(m.group(2)):
            raise ParameterError(f"hf teacher: --layer-mean {layer_mean!r} must be A:B with "
                                 f"0 <= A <= B (hidden-state indices, B included)")
        a, b = int(m.group(1)), int(m.group(2))
        return [Target(f"layers{a}-{b}-mean", tuple(range(a, b + 1)))]
    return [Target("last", (-1,))]


def _index(value: Any) -> int:
    try:
        i = int(str(value).strip())
    except ValueError:
        i = -1
    if i < 0:
        raise ParameterError(f"hf teacher: layer {value!r} must be an integer >= 0 "
                             f"(0 = input embedding, k = output of block k)")
    return i


def resolve_snapshot(spec: str) -> Path:
    """The local folder of ``hf:PATH_OR_ID``: an existing folder, else the snapshot of repo id
    ``ID`` in the local Hugging Face cache (``local_files_only``: nothing is downloaded).

    Raises:
        ValueError: neither a folder nor a cached repo id.
    """
    text = spec[len(PREFIX):] if is_hf_spec(spec) else spec
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ValueError(f"{text}: not a folder (an hf: teacher is a snapshot folder or a "
                         f"repo id in the local Hugging Face cache)")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text) or text.startswith("."):  # a path, no repo id
        raise ValueError(f"{text}: no such snapshot folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, local_files_only=True))
    except Exception:
        raise ValueError(f"{text}: no such folder, and not a repo id in the local Hugging Face "
                         f"cache (nothing is downloaded; fetch it once with "
                         f"'huggingface-cli download {text}' or give the snapshot folder)"
                         ) from None


def read_snapshot_config(folder: Path) -> Dict[str, Any]:
    """``config.json`` of a snapshot, checked to be a supported model with a feature extractor.

    Raises:
        ValueError: missing or invalid files, or an unsupported ``model_type`` (the message
            lists the supported ones).
    """
    config = _read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"{folder / 'config.json'}: model_type {kind!r} is not supported as a "
                         f"teacher; supported: {', '.join(SUPPORTED)}")
    _read_json(folder / "preprocessor_config.json")
    return config


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (a snapshot needs config.json and "
                         f"preprocessor_config.json)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a JSON object")
    return obj


def block_count(config: Dict[str, Any]) -> int:
    """Number of blocks N of a supported model (hidden-state indices are 0..N)."""
    kind = config["model_type"]
    key = SUPPORTED[kind][0]
    sub = config.get("audio_config") or {} if kind == "clap" else config
    value = sub.get(key, [2, 2, 6, 2] if kind == "clap" else None)
    return len(value) if kind == "clap" else int(value)


def resolve_targets(targets: List[Target], config: Dict[str, Any], where: str) -> List[Target]:
    """``targets`` with the "last layer" placeholder resolved, checked against the model.

    Raises:
        ParameterError: an index beyond the model's N blocks.
    """
    n = block_count(config)
    if targets == [Target("last", (-1,))]:
        return [Target(f"layer{n}", (n,))]
    for t in targets:
        if max(t.layers) > n:
            raise ParameterError(f"{where}: layer {max(t.layers)} does not exist; this "
                                 f"{config['model_type']} model has hidden states 0..{n}")
    return targets


# -------------------------------------------------------------------------------------------
# The model: feature extractor -> transformers model -> chosen hidden states (:mod:`.hf_module`)
# -------------------------------------------------------------------------------------------
def make_frontend(kind: str, fe: Any, config: Dict[str, Any]):
    """The torch front end of ``kind`` built from the feature extractor object ``fe``."""
    from . import hf_frontends as fr

    if kind in ("wav2vec2", "hubert", "wavlm"):
        return fr.WaveNorm(bool(getattr(fe, "do_normalize", True)))
    if kind == "whisper":
        return fr.WhisperLogMel(fe.mel_filters, int(fe.n_fft), int(fe.hop_length),
                                int(fe.n_samples))
    if kind == "audio-spectrogram-transformer":
        if not hasattr(fe, "mel_filters"):  # torchaudio is installed: Kaldi fbank from it
            from transformers.audio_utils import mel_filter_bank, window_function

            fe.mel_filters = mel_filter_bank(
                num_frequency_bins=257, num_mel_filters=fe.num_mel_bins, min_frequency=20,
                max_frequency=fe.sampling_rate // 2, sampling_rate=fe.sampling_rate,
                norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
            fe.window = window_function(400, "hann", periodic=False)
        return fr.KaldiFbank(fe.window, fe.mel_filters, int(fe.max_length), float(fe.mean),
                             float(fe.std), bool(fe.do_normalize))
    if kind == "clap":
        fusion = bool((config.get("audio_config") or {}).get("enable_fusion", False))
        if fe.padding not in ("repeatpad", "pad"):
            raise ValueError(f"CLAP feature extractor padding {fe.padding!r} is not supported "
                             f"(repeatpad or pad)")
        filters = fe.mel_filters if fusion else fe.mel_filters_slaney
        return fr.ClapLogMel(filters, int(fe.fft_window_size), int(fe.hop_length),
                             int(fe.nb_max_samples), fe.padding == "repeatpad", 4 if fusion else 1)
    raise ValueError(f"model_type {kind!r} is not supported; supported: {', '.join(SUPPORTED)}")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError("hf teachers need the transformers package: "
                         "pip install 'ssondo[hf]'") from None
    return transformers


def _encoder_from_snapshot(kind: str, folder: Path):
    """The eval-mode encoder of a snapshot (Whisper: its encoder; CLAP: its audio model)."""
    model = _transformers().AutoModel.from_pretrained(str(folder), local_files_only=True)
    if kind == "whisper":
        model = model.get_encoder()
    elif kind == "clap":
        model = model.audio_model
    return model.float().eval()


def _encoder_from_state(kind: str, config: Dict[str, Any], weights: bytes):
    """The encoder of ``kind`` built from its ``config.json`` dict and loaded (strictly) with
    the safetensors ``weights`` of :func:`_encoder_state`."""
    from safetensors.torch import load as load_safetensors

    tf = _transformers()
    if kind == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        model = WhisperEncoder(tf.WhisperConfig.from_dict(config))
    elif kind == "clap":
        model = tf.ClapAudioModel(tf.ClapAudioConfig.from_dict(config.get("audio_config") or {}))
    else:
        rest = {k: v for k, v in config.items() if k != "model_type"}
        model = tf.AutoModel.from_config(tf.AutoConfig.for_model(kind, **rest))
    model.load_state_dict(load_safetensors(weights), strict=True)
    return model.float().eval()


@dataclass
class HFParts:
    """An eager hf teacher and what its metadata needs."""

    module: Any  # the eager teacher nn.Module
    frontend: Any
    core: Any
    kind: str
    sample_rate: int
    targets: List[Target]
    pool: bool
    config: Dict[str, Any]
    fe: Any  # the transformers feature extractor


def load_parts(spec: str, targets: List[Target], pool: str = "mean") -> HFParts:
    """Loads ``hf:PATH_OR_ID`` into an eager teacher (settings checked before the weights)."""
    if pool not in POOLS:
        raise ParameterError(f"hf teacher: pool {pool!r} must be one of {POOLS}")
    folder = resolve_snapshot(spec)
    config = read_snapshot_config(folder)
    kind = config["model_type"]
    targets = resolve_targets(targets, config, str(folder))
    tf = _transformers()
    fe = tf.AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    return _assemble(kind, fe, config, _encoder_from_snapshot(kind, folder), targets,
                     pool == "mean")


def _assemble(kind, fe, config, model, targets, pool) -> HFParts:
    from .hf_module import HFCore, HFTeacher

    frontend = make_frontend(kind, fe, config)
    core = HFCore(model, kind, [list(t.layers) for t in targets]).eval()
    rate = int(fe.sampling_rate)
    return HFParts(HFTeacher(frontend, core, pool, rate).eval(), frontend, core, kind, rate,
                   targets, pool, config, fe)


def target_dims(parts: HFParts) -> List[int]:
    """Each target's dimension, from one forward pass on a short input.

    Raises:
        ParameterError: a layer mean over layers of different shapes, or frame output of
            targets with different frame counts (CLAP stages: pool them instead).
    """
    import torch

    with torch.inference_mode():
        hs = parts.core.hidden(parts.frontend(torch.zeros(1, parts.sample_rate // 2)))
    dims, frames = [], set()
    for t in parts.targets:
        shapes = {tuple(hs[i].shape[1:]) for i in t.layers}
        if len(shapes) > 1:
            raise ParameterError(f"hf teacher: {t.name} averages layers of different shapes "
                                 f"{sorted(shapes)}; choose layers of one shape")
        f, d = shapes.pop()
        dims.append(int(d))
        frames.add(int(f))
    if not parts.pool and len(frames) > 1:
        raise ParameterError(f"hf teacher: the chosen layers have different frame counts "
                             f"{sorted(frames)}; use --pool mean or layers of one stage")
    return dims


def teacher_meta(spec: str, parts: HFParts, dims: Sequence[int], fmt: str) -> Dict[str, Any]:
    """The ``ssondo.json`` of an hf teacher."""
    hop = 320 if parts.kind in ("wav2vec2", "hubert", "wavlm", "whisper") else None
    names = ", ".join(t.name for t in parts.targets)
    return {
        "name": f"hf-{parts.kind}", "source": spec,
        "description": f"{SUPPORTED[parts.kind][1]} ({spec[len(PREFIX):]}) hidden states "
                       f"{names}, {'mean over frames' if parts.pool else 'frames'}",
        "sample_rate": parts.sample_rate, "output": "clip" if parts.pool else "frame",
        "dim": int(sum(dims)), "hop": None if parts.pool else hop,
        "targets": [{"name": t.name, "dim": int(d), "layers": list(t.layers)}
                    for t, d in zip(parts.targets, dims)],
        "pool": "mean" if parts.pool else "none", "model_type": parts.kind, "format": fmt,
    }


# -------------------------------------------------------------------------------------------
# Writing and reading teacher files
# -------------------------------------------------------------------------------------------
def _check_inputs(rate: int) -> List[Any]:
    """Waveforms of several lengths and batch sizes for the build-time check (seeded)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(b, max(1, int(s * rate)), generator=g)
            for b, s in zip((2, 1, 3), CHECK_SECONDS)]


def _max_error(module, eager, inputs) -> float:
    import torch

    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            a, b = module(x), eager(x)
            if a.shape != b.shape:
                return float("inf")
            scale = max(1.0, float(b.abs().max()))
            worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def _device_portable(traced) -> None:
    """Replaces the device constants tracing records (``torch.arange(..., device=x.device)``
    becomes ``device="cpu"``) by the device of each traced method's first tensor input, so a
    teacher traced on the CPU runs on any device.

    Raises:
        RuntimeError: a device constant in a method without tensor inputs.
    """
    for name, sub in traced.named_modules():
        try:
            graph = sub.graph
        except (AttributeError, RuntimeError):  # a module whose forward is never called
            continue
        tensors = [v for v in list(graph.inputs())[1:] if v.type().kind() == "TensorType"]
        for node in list(graph.nodes()):
            if node.kind() != "prim::Constant" or node.output().type().kind() != "DeviceObjType":
                continue
            if not tensors:
                raise RuntimeError(f"traced {name or 'model'} fixes a device")
            device = graph.create("prim::device", [tensors[0]])
            device.output().setType(node.output().type())
            device.insertBefore(node)
            node.output().replaceAllUsesWith(device.output())
            node.destroy()


def trace_teacher(parts: HFParts):
    """The TorchScript teacher (front end and pooling scripted, the model traced on features).

    Raises:
        RuntimeError: tracing failed or the traced teacher differs from the eager one by more
            than 1e-4 (relative to max(1, |output|)) on the check inputs.
    """
    import warnings

    import torch

    from .hf_module import HFTeacher

    example = parts.frontend(_check_inputs(parts.sample_rate)[0])
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings of transformers' shape checks
        traced_core = torch.jit.trace(parts.core, (example,), check_trace=False, strict=False)
        _device_portable(traced_core)
        scripted = torch.jit.script(HFTeacher(parts.frontend, traced_core, parts.pool,
                                              parts.sample_rate).eval())
    err = _max_error(scripted, parts.module, _check_inputs(parts.sample_rate))
    if not err <= CHECK_TOLERANCE:
        raise RuntimeError(f"traced teacher differs from the eager model by {err:.2g}")
    return scripted


def build_hf_teacher_file(spec: str, path: PathLike, *, layer: Optional[int] = None,
                          layers: Optional[str] = None, layer_mean: Optional[str] = None,
                          pool: str = "mean", fmt: str = "auto") -> Dict[str, Any]:
    """Writes the teacher file of ``hf:PATH_OR_ID`` to ``path`` atomically; returns its metadata.

    Args:
        spec: ``hf:`` + snapshot folder or repo id in the local Hugging Face cache.
        layer, layers, layer_mean: the targets (see :func:`parse_targets`); default: last.
        pool: "mean" ([B, L*D], mean over frames) or "none" ([B, F, L*D]).
        fmt: "torchscript", "state", or "auto" (TorchScript unless tracing fails or differs
            from the eager model, then state).

    Raises:
        ValueError / ParameterError: bad settings, unsupported model, missing files;
        RuntimeError: ``fmt="torchscript"`` and the model does not trace faithfully.
    """
    import warnings

    if fmt not in FORMATS:
        raise ParameterError(f"hf teacher: format {fmt!r} must be one of {FORMATS}")
    parts = load_parts(spec, parse_targets(layer, layers, layer_mean), pool)
    dims = target_dims(parts)
    scripted = None
    if fmt != "state":
        try:
            scripted = trace_teacher(parts)
        except Exception as e:  # any tracing failure: fall back to the state file
            why = _first_line(e)
            if fmt == "torchscript":
                raise RuntimeError(f"{spec}: TorchScript cannot hold this model ({why}); "
                                   f"use --format state") from None
            warnings.warn(f"{spec}: TorchScript cannot hold this model ({why}); writing a "
                          f"state teacher file (config + safetensors) instead")
    meta = teacher_meta(spec, parts, dims, "torchscript" if scripted is not None else "state")
    if scripted is not None:
        from . import save_teacher

        save_teacher(scripted, path, meta)
    else:
        _save_state(parts, path, meta)
    return meta


def _save_state(parts: HFParts, path: PathLike, meta: Dict[str, Any]) -> None:
    """Zip (stored) of ssondo.json, config.json, preprocessor_config.json and the encoder's
    weights as model.safetensors."""
    from safetensors.torch import save as save_safetensors

    from ..atomic import atomic_open
    from ..loading import META_FILE

    state = {k: v.detach().contiguous() for k, v in parts.core.model.state_dict().items()}
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr(META_FILE, json.dumps(meta, sort_keys=True))
        z.writestr("config.json", json.dumps(parts.config, sort_keys=True))
        z.writestr("preprocessor_config.json", json.dumps(parts.fe.to_dict(), sort_keys=True))
        z.writestr("model.safetensors", save_safetensors(state))


def is_state_file(path: PathLike) -> bool:
    """True when ``path`` is a state teacher file (a zip holding ssondo.json at its top)."""
    try:
        with zipfile.ZipFile(path) as z:
            return {"ssondo.json", *STATE_FILES} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_state_teacher(path: PathLike):
    """The eager teacher module and metadata of a state teacher file.

    Raises:
        ValueError: not a state file, bad metadata, or weights that do not fit the config.
    """
    from ..loading import META_FILE

    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META_FILE))
            config = json.loads(z.read("config.json"))
            fe_dict = json.loads(z.read("preprocessor_config.json"))
            weights = z.read("model.safetensors")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable hf state teacher file ({e})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != "state" or kind not in SUPPORTED:
        raise ValueError(f"{path}: not an hf state teacher file (model_type {kind!r})")
    try:
        targets = [Target(str(t["name"]), tuple(int(i) for i in t["layers"]))
                   for t in meta["targets"]]
        pool = meta["pool"] == "mean"
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: ssondo.json lacks valid targets/pool") from None
    resolve_targets(targets, config, str(path))
    tf = _transformers()
    fe_type = str(fe_dict.get("feature_extractor_type", ""))
    fe_class = getattr(tf, fe_type, None) if fe_type.endswith("FeatureExtractor") else None
    if fe_class is None:
        raise ValueError(f"{path}: unknown feature_extractor_type {fe_type!r}")
    try:
        fe = fe_class.from_dict(fe_dict)
        model = _encoder_from_state(kind, config, weights)
    except Exception as e:
        raise ValueError(f"{path}: cannot rebuild the {kind} model ({_first_line(e)})") from None
    return _assemble(kind, fe, config, model, targets, pool).module, meta


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
