"""Rounding noise while training (pyssondo.train.rounding_noise) against a numpy reference."""
import numpy as np
import pytest
import torch
from torch import nn

from pyssondo.errors import ParameterError
from pyssondo.train.config import DistillConfig
from pyssondo.train.rounding_noise import add_rounding_noise


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize("steps", [1.0, 3.0])
def test_noise_is_uniform_over_int8_steps_in_training_only(steps):
    net, x = _net(), torch.randn(8, 1, 20, 30)
    clean_bn = {}
    net[1].register_forward_hook(lambda m, a, out: clean_bn.setdefault("out", out.detach()))
    net.eval()
    want_eval = net(x)
    add_rounding_noise(net, steps)
    assert torch.equal(net(x), want_eval)  # eval: the clean network, bit for bit
    net.train()
    clean_bn.clear()
    seen = {}
    net[1].register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach()))
    net(x)
    # the first hook saw the clean batch-norm output, the later one the noisy one
    clean, noisy = clean_bn["out"].numpy(), seen["out"].numpy()
    step = (clean.max() - clean.min()) / 255
    noise = (noisy - clean) / (steps * step)
    assert np.abs(noise).max() <= 0.5 + 1e-4
    assert abs(noise.std() - 1 / np.sqrt(12)) < 0.01  # uniform on [-1/2, 1/2]
    assert abs(noise.mean()) < 0.01


def test_bad_settings_are_refused(caplog):
    with caplog.at_level("WARNING", logger="ssondo.train"):
        assert add_rounding_noise(nn.Sequential(nn.Conv2d(1, 2, 3)), 1.0) == []
    assert "no batch-norm layer" in caplog.text
    with pytest.raises(ParameterError, match="rounding_noise"):
        add_rounding_noise(_net(), 0.0)
    with pytest.raises(ParameterError, match="rounding_noise"):
        DistillConfig(rounding_noise=-1.0).validate()
    # unset = by data size; off is not part of the hash, and a run stored before the setting
    # existed reads as off (so it keeps its hash and resumes as it trained)
    assert DistillConfig().rounding_noise is None
    assert "rounding_noise" not in DistillConfig(rounding_noise=0.0).hashed_settings()
    old = {k: v for k, v in DistillConfig(rounding_noise=0.0).to_dict().items()
           if k != "rounding_noise"}
    assert DistillConfig.from_stored(old).rounding_noise == 0.0
    assert DistillConfig.from_stored(old).hash() == DistillConfig(rounding_noise=0.0).hash()


def test_noise_by_data_size_unless_set():
    """One int8 step from MIN_PASS_SEGMENTS training segments on (where it won on
    bench/quality.py and a 1090-segment FSDD set), none below (a 360-segment set: no gain)."""
    from pyssondo.train.config import MIN_PASS_SEGMENTS

    cfg = DistillConfig()
    assert cfg.resolved_rounding_noise(MIN_PASS_SEGMENTS) == 1.0
    assert cfg.resolved_rounding_noise(MIN_PASS_SEGMENTS - 1) == 0.0
    assert cfg.replace(rounding_noise=0.0).resolved_rounding_noise(10**6) == 0.0
    assert cfg.replace(rounding_noise=3.0).resolved_rounding_noise(10) == 3.0
