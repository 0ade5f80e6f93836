"""Students, heads and the ``ssondo students`` command.

References used: hand-counted MACs of a tiny conv net, a per-example loop for DyMN's batched
dynamic convolution, the statistics-pooling formula for ERes2Net, an index-table Dynamic
Shift-Max and an F.unfold/F.fold MobileViT v2 block, the published parameter and MAC counts of
MicroNet and MobileViT v2 (ImageNet heads rebuilt in the test), and eager vs TorchScript.
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
from pyssondo.students.micronet import DynamicShiftMax

ALL = ["mn01", "mn02", "mn04", "mn05", "mn10", "mn20", "dymn04", "dymn10", "eres2net16",
       "eres2net32", "micronet-m0", "micronet-m1", "micronet-m2", "micronet-m3",
       "mobilevitv2-050", "mobilevitv2-075", "mobilevitv2-100"]
# One variant per family for the per-family tests.
ONE_PER_FAMILY = ["mn10", "dymn04", "eres2net16", "micronet-m0", "mobilevitv2-050"]
# Output frames per input frame count: MobileNets, MicroNet and MobileViT v2 downsample time by
# 32, ERes2Net by 8.
TIME_STRIDE = {"mn": 32, "dy": 32, "er": 8, "mi": 32, "mo": 32}


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
SHAPE_FRAMES = {"mn20": (1,), "dymn10": (1,), "eres2net32": (1,), "micronet-m3": (1, 33),
                "mobilevitv2-075": (1, 33), "mobilevitv2-100": (1,)}


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
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
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


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_ten_seconds_one_per_family(name):
    model = create_student(name).eval()
    frames = ten_second_frames()
    with torch.no_grad():
        out = model.forward_frames(torch.randn(1, 128, frames))
    assert out.shape == (1, expected_frames(name, frames), model.embed_dim)


def test_ten_seconds_is_624_frames():
    assert ten_second_frames() == 1 + (320000 - 1024) // 512 == 624


@pytest.mark.parametrize("name", ["mn04", "dymn04", "mobilevitv2-050"])
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


# Published ImageNet complexity (3-channel input, each paper's classifier), (params, MACs):
# - MicroNet: Li et al., ICCV 2021, Table 2, and the liyunsheng13/micronet README: M0 1.0M /
#   4M MAdds, M1 1.8M / 6M, M2 2.4M / 12M, M3 2.6M / 21M at 224 x 224. Classifier (its
#   backbone/micronet.py): Linear(d, h)-BN-h-swish -> Dropout -> Linear(h, 1000)-BN-h-swish with
#   h = MODEL.MICRONETS.OUT_CH of script/eval_micronet_m*.sh: 640, 960, 1024, 1024.
# - MobileViT v2: Mehta & Rastegari 2022, Table 9 / ml-cvnets model zoo: width 0.5 1.37M /
#   0.466G FLOPs (= MACs), 0.75 2.87M / 1.03G, 1.0 4.90M / 1.84G at 256 x 256; classifier
#   global average pool -> Linear(d, 1000).
# The published numbers are rounded; counts must agree within 5% (params) and 7% (MACs).
PUBLISHED = {
    "micronet-m0": (224, 640, 1.0e6, 4e6), "micronet-m1": (224, 960, 1.8e6, 6e6),
    "micronet-m2": (224, 1024, 2.4e6, 12e6), "micronet-m3": (224, 1024, 2.6e6, 21e6),
    "mobilevitv2-050": (256, 0, 1.37e6, 0.466e9), "mobilevitv2-075": (256, 0, 2.87e6, 1.03e9),
    "mobilevitv2-100": (256, 0, 4.90e6, 1.84e9),
}


class ImageNetVariant(nn.Module):
    """The published ImageNet network around a student's layers: a 3-channel first conv, the
    paper's pooling and classifier. Input [1, size, size] (a gray image, repeated to RGB)."""

    def __init__(self, name, size, hidden):
        super().__init__()
        student = create_student(name, n_mels=size)
        self.features = student.features
        d = student.embed_dim
        if name.startswith("micronet"):
            old = self.features[0]
            self.features[0] = nn.Conv2d(3, old.out_channels, old.kernel_size, old.stride,
                                         old.padding, bias=False)
            self.pool = nn.Sequential(nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Hardswish())
            self.classifier = nn.Sequential(
                nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.Hardswish(), nn.Dropout(0.05),
                nn.Linear(hidden, 1000), nn.BatchNorm1d(1000), nn.Hardswish())
        else:
            old = self.features[0][0]
            self.features[0][0] = nn.Conv2d(3, old.out_channels, 3, 2, 1, bias=False)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(d, 1000)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x.unsqueeze(1).expand(-1, 3, -1, -1))))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_macs(name):
    size, hidden, params, macs = PUBLISHED[name]
    net = ImageNetVariant(name, size, hidden)
    assert count_params(net) == pytest.approx(params, rel=0.05)
    assert count_macs(net, size, size) == pytest.approx(macs, rel=0.07)


def test_new_families_dims():
    """Embedding sizes: MicroNet's last block channels (microconfig.py), MobileViT v2's
    layer 5 channels 512 x width."""
    dims = {"micronet-m0": 384, "micronet-m1": 576, "micronet-m2": 768, "micronet-m3": 864,
            "mobilevitv2-050": 256, "mobilevitv2-075": 384, "mobilevitv2-100": 512}
    for name, dim in dims.items():
        assert create_student(name).embed_dim == dim


@pytest.mark.parametrize("two", [True, False])
def test_dynamic_shift_max_formula(two):
    """The original's index table for the shift (channel j of group i reads channel
    ((i + 1) mod g) * n + (j + 1) mod n, n = C / g) and its coefficient rescaling."""
    act = DynamicShiftMax(12, reduction=4, groups=3, two=two, init_a=(1.0, 0.5),
                          init_b=(0.0, 0.5))
    nn.init.normal_(act.fc[2].weight, 0.0, 0.5)
    x = torch.randn(2, 12, 5, 4)
    lin1, _, lin2, _ = act.fc
    hidden = torch.relu(x.mean(dim=(2, 3)) @ lin1.weight.T + lin1.bias)
    theta = 4 * (torch.clamp(hidden @ lin2.weight.T + lin2.bias + 3, 0, 6) / 6 - 0.5)
    theta = theta.reshape(2, 4 if two else 2, 12, 1, 1)
    index = torch.tensor([((c // 4 + 1) % 3) * 4 + (c % 4 + 1) % 4 for c in range(12)])
    shifted = x[:, index]
    ref = x * (theta[:, 0] + 1.0) + shifted * theta[:, 1]
    if two:
        ref = torch.maximum(ref, x * (theta[:, 2] + 0.5) + shifted * (theta[:, 3] + 0.5))
    torch.testing.assert_close(act(x), ref)
    assert count_macs(nn.Sequential(nn.Unflatten(1, (12, 2)), act), 24, 3) == (
        lin1.weight.numel() + lin2.weight.numel() + (4 if two else 2) * 12 * 2 * 3)


def test_micronet_pooling():
    """Frames: h-swish of ReLU6(last map) averaged over frequency; clip: h-swish of its mean
    over frequency and time (the original's ReLU6 -> global pool -> h-swish)."""
    model = create_student("micronet-m0").eval()
    x = torch.randn(2, 128, 90)
    with torch.no_grad():
        fmap = torch.clamp(model.features(x.unsqueeze(1)), 0, 6)
        torch.testing.assert_close(model(x), F.hardswish(fmap.mean(dim=(2, 3))))
        torch.testing.assert_close(model.forward_frames(x),
                                   F.hardswish(fmap.mean(dim=2)).transpose(1, 2))


def _vit_block_reference(block, x):
    """ml-cvnets' unfolding with F.unfold / F.fold (on the map zero-padded to even sizes, then
    cropped) and the attention layers written with matrix products."""
    fm = block.local(x)
    b, d, h, w = fm.shape
    fm = F.pad(fm, [0, w % 2, 0, h % 2])
    hp, wp = fm.shape[2:]
    patches = F.unfold(fm, kernel_size=2, stride=2).reshape(b, d, 4, -1)  # [B, d, P, N]
    *layers, final_norm = block.global_rep
    for layer in layers:
        y = layer.norm1(patches)
        qkv = torch.einsum("od,bdpn->bopn", layer.attn.qkv.weight[:, :, 0, 0], y)
        qkv = qkv + layer.attn.qkv.bias[None, :, None, None]
        q, k, v = qkv[:, :1], qkv[:, 1:1 + d], qkv[:, 1 + d:]
        context = torch.einsum("bdpn,bpn->bdp", k, torch.softmax(q[:, 0], dim=-1))
        out = torch.einsum("od,bdpn->bopn", layer.attn.out_proj.weight[:, :, 0, 0],
                           torch.relu(v) * context[..., None])
        patches = patches + out + layer.attn.out_proj.bias[None, :, None, None]
        patches = patches + layer.ffn(layer.norm2(patches))
    patches = final_norm(patches)
    fm = F.fold(patches.reshape(b, d * 4, -1), (hp, wp), kernel_size=2, stride=2)
    return block.proj(fm[:, :, :h, :w])


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (1, 1)])
def test_mobilevitv2_block_matches_unfold_reference(size):
    block = create_student("mobilevitv2-050").features[5].eval()  # 128 channels, d = 64
    x = torch.randn(2, 128, *size)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _vit_block_reference(block, x), rtol=1e-4,
                                   atol=1e-5)


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
    with pytest.raises(ParameterError, match="variant='m9'.*m0, m1, m2, m3"):
        create_student("micronet-m0").__class__("m9")
    with pytest.raises(ParameterError, match="width=-1"):
        create_student("mobilevitv2-050").__class__(-1.0)


def test_n_mels_option():
    model = create_student("eres2net16", n_mels=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 64, 20)).shape == (1, 512)


@pytest.mark.parametrize("name", ["mn01", "dymn04", "eres2net16", "micronet-m0",
                                  "mobilevitv2-050"])
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


def _student_rows(out):
    return {line.split()[0]: line.split() for line in out.splitlines()[2:]}


def test_students_command(capsys):
    from pyssondo.cli import main

    assert main(["students", "--frames", "100", "--no-latency", "--sort", "params"]) == 0
    rows = _student_rows(capsys.readouterr().out)
    params = [float(r[2].rstrip("M")) for r in rows.values()]
    assert params == sorted(params)
    assert set(ALL) <= set(rows)
    assert rows["mn10"][1:4] == ["mobilenetv3", "2.97M", "960"]
    assert rows["eres2net16"][1:4] == ["eres2net", "1.43M", "512"]
    assert rows["micronet-m0"][1:4] == ["micronet", "0.13M", "384"]
    assert rows["mobilevitv2-050"][1:4] == ["mobilevitv2", "1.11M", "256"]
    mn10 = create_student("mn10")
    macs = count_macs(mn10, 128, 100)
    assert rows["mn10"][4] == f"{macs / 1e6:.2f}M"
    assert rows["mn10"][5:7] == ["-", "-"]


@pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]*` is deprecated")
def test_students_command_measures_exports(capsys, tmp_path):
    """Latency and size of the export with its front end: the size is that of the file
    `ssondo export` writes; --sort latency orders the rows."""
    from pyssondo.cli import main
    from pyssondo.frontend import MelConfig
    from pyssondo.export import save_export, wrap

    assert main(["students", "--students", "micronet-m0,mn01", "--sort", "latency"]) == 0
    rows = _student_rows(capsys.readouterr().out)
    assert set(rows) == {"mn01", "micronet-m0"}
    latencies = [float(r[5]) for r in rows.values()]
    assert latencies == sorted(latencies) and latencies[0] > 0
    # `ssondo export`'s writer; its ssondo.json adds < 1 kB
    report = save_export(wrap(create_student("mn01"), None, MelConfig(), 10.0),
                         tmp_path / "mn01.pt", {}, measure=False)
    assert float(rows["mn01"][6]) == pytest.approx(report.path.stat().st_size / 1e6, abs=0.006)


@pytest.mark.parametrize("argv", [["--frames", "0"], ["--students", "mn99"],
                                  ["--no-latency", "--sort", "latency"]])
def test_students_command_rejects_bad_settings(argv, capsys):
    from pyssondo.cli import main

    assert main(["students", *argv]) != 0
    assert argv[1] in capsys.readouterr().err
