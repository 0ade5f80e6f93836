"""Students, heads and the ``ssondo students`` command.

References used: hand-counted MACs of a tiny conv net, a per-example loop for DyMN's batched
dynamic convolution, the statistics-pooling formula for ERes2Net, and eager vs TorchScript.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyssondo.errors import ParameterError
from pyssondo.heads import make_head
from pyssondo.students import (count_macs, count_params, create_student, list_students,
                               register_student, ten_second_frames)
from pyssondo.students.dymn import DynamicConv, DynamicReLU, temperature_at

ALL = ["mn01", "mn02", "mn04", "mn05", "mn10", "mn20", "dymn04", "dymn10", "eres2net16",
       "eres2net32"]
# Output frames per input frame count: MobileNets downsample time by 32, ERes2Net by 8.
TIME_STRIDE = {"mn": 32, "dy": 32, "er": 8}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_frames(name: str, frames: int) -> int:
    return math.ceil(frames / TIME_STRIDE[name[:2]])


def test_registry_lists_every_family():
    assert set(ALL) <= set(list_students())


def test_unknown_student_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown student 'mn99'.*mn10.*dymn10.*eres2net16"):
        create_student("mn99")


def test_duplicate_registration_is_an_error():
    def mn10(**kw):  # same name as the registered MobileNetV3
        return None

    with pytest.raises(ValueError, match="registered twice"):
        register_student(mn10)


# The variants of a family share their code and differ only in widths; the large ones run
# one short input to keep the suite fast.
SHAPE_FRAMES = {"mn20": (1,), "dymn10": (1,), "eres2net32": (1,)}


@pytest.mark.parametrize("name", ALL)
def test_shapes(name):
    """Every variant: clip and frame shapes for 1, 10 and 100 frames (1 is shorter than any
    receptive field) and finite outputs."""
    model = create_student(name).eval()
    for frames in SHAPE_FRAMES.get(name, (1, 10, 100)):
        x = torch.randn(1, 128, frames)
        with torch.no_grad():
            clip, frame = model(x), model.forward_frames(x)
        assert clip.shape == (1, model.embed_dim)
        assert frame.shape == (1, expected_frames(name, frames), model.embed_dim)
        assert torch.isfinite(clip).all() and torch.isfinite(frame).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]*` is deprecated")
@pytest.mark.parametrize("name", ["mn10", "dymn04", "eres2net16"])
def test_scripted_equals_eager(name, tmp_path):
    """Scripted, saved and reloaded (as an export is) == eager, clip and frame outputs."""
    model = create_student(name).eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "student.pt"))
    scripted = torch.jit.load(str(tmp_path / "student.pt"))
    for frames in (1, 37):
        x = torch.randn(2, 128, frames)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(scripted.forward_frames(x), model.forward_frames(x),
                                       rtol=1e-5, atol=1e-6)
    assert scripted.embed_dim == model.embed_dim


@pytest.mark.parametrize("name", ["mn10", "dymn04", "eres2net16"])
def test_ten_seconds_one_per_family(name):
    model = create_student(name).eval()
    frames = ten_second_frames()
    with torch.no_grad():
        out = model.forward_frames(torch.randn(1, 128, frames))
    assert out.shape == (1, expected_frames(name, frames), model.embed_dim)


def test_ten_seconds_is_624_frames():
    assert ten_second_frames() == 1 + (320000 - 1024) // 512 == 624


@pytest.mark.parametrize("name", ["mn04", "dymn04"])
def test_mobilenet_clip_is_mean_of_frames(name):
    model = create_student(name).eval()
    x = torch.randn(2, 128, 200)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_frames(x).mean(dim=1))


def test_eres2net_statistics_pooling():
    """Clip embedding = Linear([mean_t h, population std_t h]) of the frequency-averaged map;
    a frame window wider than the clip reproduces it for every frame; one frame gives std 0."""
    model = create_student("eres2net16", frame_context=31).eval()
    x = torch.randn(2, 128, 80)  # 10 output frames
    with torch.no_grad():
        h = model._frame_features(x)
        ref = model.embedding(torch.cat([h.mean(2), h.std(2, unbiased=False)], dim=1))
        clip, frames = model(x), model.forward_frames(x)
        torch.testing.assert_close(clip, ref, rtol=1e-4, atol=1e-5)
        assert frames.shape == (2, 10, 512)
        torch.testing.assert_close(frames, clip[:, None].expand_as(frames), rtol=1e-4, atol=1e-5)
        short = torch.randn(1, 128, 3)
        assert model._frame_features(short).shape[-1] == 1
        assert torch.isfinite(model(short)).all()


def test_param_counts_and_dims():
    """Stated counts (backbone only, no classifier/head): mn10 2.97M / 960-d (EfficientAT mn10
    without its classifier), dymn10 8.64M / 960-d, eres2net16 1.43M / 512-d."""
    expected = {"mn10": (2.8e6, 3.1e6, 960), "dymn10": (8.4e6, 8.9e6, 960),
                "eres2net16": (1.3e6, 1.5e6, 512), "mn01": (0.03e6, 0.06e6, 96)}
    for name, (lo, hi, dim) in expected.items():
        model = create_student(name)
        assert lo <= count_params(model) <= hi, (name, count_params(model))
        assert model.embed_dim == dim


class TinyNet(nn.Module):
    """conv 3x3 s2 (1 -> 4) -> depthwise 3x3 -> conv1d k3 (4 -> 2 over time) -> Linear(2, 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.conv1d = nn.Conv1d(4, 2, 3)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        y = self.dw(self.conv(x.unsqueeze(1)))  # [B, 4, 4, 5] for an 8 x 10 input
        y = self.conv1d(y.mean(dim=2))  # [B, 2, 3]
        return self.fc(y.mean(dim=2))


def test_count_macs_by_hand():
    # conv: 4*4*5 outputs x 1*9; dw: 80 outputs x 1*9; conv1d: 2*3 outputs x 4*3; fc: 3 x 2
    assert count_macs(TinyNet(), n_mels=8, frames=10) == 80 * 9 + 80 * 9 + 6 * 12 + 3 * 2
    assert count_params(TinyNet()) == (36 + 4) + 36 + (24 + 2) + (6 + 3)


def test_count_macs_restores_mode():
    model = TinyNet().train()
    count_macs(model, 8, 10)
    assert model.training


class DynWrap(nn.Module):
    """[1, 24, 6] log-mel -> [1, 6, 4, 6] map -> one dynamic grouped conv (stride 2)."""

    def __init__(self):
        super().__init__()
        self.dyn = DynamicConv(6, 6, context_dim=5, kernel=3, stride=2, groups=3, num_kernels=4)

    def forward(self, x):
        return self.dyn(x.reshape(1, 6, 4, 6), torch.ones(1, 5))


def test_count_macs_dynamic_conv():
    """Per-example conv (outputs x in/groups x k x k) + mixing K kernels (K x weight size) +
    the attention Linear (K x context)."""
    wrap = DynWrap()
    out_elems = 6 * 2 * 3  # input [1, 6, 4, 6] -> [1, 6, 2, 3]
    expected = out_elems * 2 * 9 + 4 * (6 * 2 * 9) + 4 * 5
    assert count_macs(wrap, n_mels=24, frames=6) == expected


def test_dynamic_conv_matches_per_example_loop():
    conv = DynamicConv(8, 8, context_dim=5, kernel=3, stride=2, groups=8)
    conv.temperature = 1.0
    x, context = torch.randn(3, 8, 9, 7), torch.randn(3, 5)
    out = conv(x, context)
    pi = torch.softmax(conv.attention(context), dim=-1)
    kernels = conv.weight.reshape(conv.num_kernels, 8, 1, 3, 3)
    for b in range(3):
        w = (pi[b][:, None, None, None, None] * kernels).sum(0)
        ref = F.conv2d(x[b:b + 1], w, None, 2, 1, 1, 8)
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-5, atol=1e-5)


def test_dynamic_relu_formula():
    act = DynamicReLU(4, context_dim=3)
    x, context = torch.randn(2, 4, 5, 6), torch.randn(2, 3)
    theta = (2 * torch.sigmoid(act.coefs(context)) - 1).reshape(2, 4, 4)
    a1, a2 = 1 + theta[..., 0], theta[..., 1]
    b1, b2 = 0.5 * theta[..., 2], 0.5 * theta[..., 3]
    e = (Ellipsis, None, None)
    ref = torch.maximum(a1[e] * x + b1[e], a2[e] * x + b2[e])
    torch.testing.assert_close(act(x, context), ref)


def test_dymn_temperature_schedule():
    assert temperature_at(0) == 30.0
    assert temperature_at(10) == 20.0
    assert temperature_at(1000) == 1.0
    model = create_student("dymn04")
    model.set_epoch(5)
    temps = {m.temperature for m in model.modules() if isinstance(m, DynamicConv)}
    assert temps == {25.0}


@pytest.mark.parametrize("bad", [torch.randn(2, 64, 10), torch.randn(128, 10),
                                 torch.randn(1, 128, 0)])
def test_bad_input_shape(bad):
    with pytest.raises(ValueError, match=r"\[B, n_mels=128, frames>=1\]"):
        create_student("mn01")(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ParameterError, match="width=0"):
        create_student("mn10").__class__(0.0)
    with pytest.raises(ParameterError, match="frame_context=4"):
        create_student("eres2net16", frame_context=4)


def test_n_mels_option():
    model = create_student("eres2net16", n_mels=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 64, 20)).shape == (1, 512)


@pytest.mark.parametrize("name", ["mn01", "dymn04", "eres2net16"])
def test_gradients_reach_every_parameter(name):
    model = create_student(name).train()
    head = make_head("mlp", model.embed_dim, 32)
    x, target = torch.randn(3, 128, 40), torch.randn(3, 32)
    loss = (1 - F.cosine_similarity(head(model(x)), target, dim=-1)).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]*` is deprecated")
@pytest.mark.parametrize("kind", ["mlp", "linear", "identity"])
def test_heads_map_clips_and_frames(kind):
    d = 16
    out_dim = d if kind == "identity" else 24
    head = make_head(kind, d, out_dim).eval()
    clip, frames = torch.randn(4, d), torch.randn(4, 7, d)
    assert head(clip).shape == (4, out_dim)
    assert head(frames).shape == (4, 7, out_dim)
    torch.testing.assert_close(head(frames)[:, 3], head(frames[:, 3]))
    torch.testing.assert_close(torch.jit.script(head)(clip), head(clip))


def test_mlp_head_is_s_sondo():
    head = make_head("mlp", 960, 768)
    lin1, act, drop, lin2 = head
    assert (lin1.in_features, lin1.out_features) == (960, 1280)
    assert isinstance(act, nn.Hardswish) and drop.p == 0.2
    assert (lin2.in_features, lin2.out_features) == (1280, 768)


def test_head_errors():
    with pytest.raises(ValueError, match=r"identity.*960.*768"):
        make_head("identity", 960, 768)
    with pytest.raises(ParameterError, match="unknown head 'mlpp'.*mlp, linear, identity"):
        make_head("mlpp", 4, 4)
    with pytest.raises(ValueError, match="in_dim=0"):
        make_head("linear", 0, 4)


def test_students_command(capsys):
    from pyssondo.cli import main

    assert main(["students", "--frames", "100"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(ALL) <= set(rows)
    assert rows["mn10"][1:4] == ["mobilenetv3", "2.97M", "960"]
    assert rows["eres2net16"][1:4] == ["eres2net", "1.43M", "512"]
    mn10 = create_student("mn10")
    macs = count_macs(mn10, 128, 100)
    assert rows["mn10"][4] == f"{macs / 1e6:.2f}M"


def test_students_command_rejects_bad_frames():
    from pyssondo.cli import main

    assert main(["students", "--frames", "0"]) != 0
