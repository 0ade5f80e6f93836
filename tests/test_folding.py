"""Batch norm folded into convolutions: the same outputs as the original network, eager and
scripted, for every family; the original is untouched; float32 TorchScript exports have it."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from pyssondo.export import save_export, wrap
from pyssondo.folding import fold_batch_norm
from pyssondo.frontend import MelConfig
from pyssondo.students import create_student

MEL = MelConfig(sample_rate=16000, f_max=8000.0, n_mels=64)


def norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def with_statistics(name: str) -> torch.nn.Module:
    """A random ``name`` student whose batch norms hold statistics far from the identity (the
    cumulative average of 3 training-mode passes) and random affine weights."""
    torch.manual_seed(0)
    student = create_student(name, n_mels=MEL.n_mels)
    for m in student.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    student.train()
    with torch.no_grad():
        for _ in range(3):
            student(torch.randn(4, MEL.n_mels, 40))
    return student.eval()


@pytest.mark.parametrize("name, left", [("mn01", 0), ("dymn04", 44), ("eres2net16", 0),
                                        ("micronet-m0", 0), ("mobilevitv2-050", 0)])
def test_folded_student_equals_the_original(name, left):
    """Clip and frame embeddings, eager and scripted, are as close to the original network
    run in float64 as the original in float32 is (within 4x its rounding error, which is
    1e-6 to 2e-5 of the largest value); DyMN keeps the batch norms after its dynamic
    convolutions."""
    student = with_statistics(name)
    before = norms(student)
    folded = fold_batch_norm(student)
    assert norms(folded) == left and norms(student) == before  # the original is untouched
    x = torch.randn(2, MEL.n_mels, 50, generator=torch.Generator().manual_seed(1))
    scripted = torch.jit.script(folded)
    exact = copy.deepcopy(student).double()
    with torch.no_grad():
        for method in ("forward", "forward_frames"):
            want = getattr(exact, method)(x.double())
            rounding = float((getattr(student, method)(x) - want).abs().max())
            for model in (folded, scripted):
                got = getattr(model, method)(x).double()
                torch.testing.assert_close(got, want, rtol=0,
                                           atol=4 * rounding + 1e-7 * want.abs().max())


def test_float_export_holds_no_batch_norm_and_matches_eager(tmp_path):
    """`save_export` (float32) writes the folded student; its check is against the unfolded
    eager module."""
    module = wrap(with_statistics("mn01"), None, MEL, 1.0)
    report = save_export(module, tmp_path / "s.pt", {}, measure=False)
    loaded = torch.jit.load(str(report.path))
    assert not [m for m in loaded.modules() if "BatchNorm" in m.original_name]
    assert report.max_rel_diff < 1e-5
    wav = 0.1 * torch.randn(2, 24000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = module(wav)
        torch.testing.assert_close(loaded(wav), want, rtol=0, atol=1e-5 * want.abs().max())


def strides(shape, channels_last: bool):
    """Strides of a dense [O, I, H, W] tensor, contiguous or channels-last (explicit: for
    1x1 kernels torch calls both layouts contiguous)."""
    o, i, h, w = shape
    return (i * h * w, 1, w * i, i) if channels_last else (i * h * w, h * w, w, 1)


@pytest.mark.parametrize("name, channels_last", [("mn01", True), ("eres2net16", False),
                                                 ("micronet-m0", False)])
def test_float_export_stores_channels_last_weights_where_the_family_asks(name, channels_last,
                                                                         tmp_path):
    """MobileNetV3 float32 exports hold their convolution weights channels-last (torch's CPU
    convolutions then skip reordering; 14-19% faster for mn04), the other families contiguous;
    the caller's module keeps contiguous weights, and the file matches it."""
    module = wrap(with_statistics(name), None, MEL, 1.0)
    report = save_export(module, tmp_path / "s.pt", {}, measure=False)
    loaded = torch.jit.load(str(report.path))
    weights = [p for p in loaded.backbone.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights
    assert all(p.stride() == strides(p.shape, channels_last) for p in weights)
    assert all(p.stride() == strides(p.shape, False)
               for p in module.backbone.parameters() if p.dim() == 4)
