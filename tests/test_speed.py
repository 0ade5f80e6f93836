"""--compile: which training-step variant StepVariants settles on, from the step times it is
given (no clock), what each variant does to the model (memory format, compiled network), and
inductor's training step against eager. The variants on a real run:
tests/test_distill.py::test_compile_auto_tries_each_variant_on_the_same_loss_curve."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyssondo.errors import ParameterError
from pyssondo.train import speed
from pyssondo.train.config import DistillConfig
from pyssondo.train.speed import MIN_GAIN, StepVariants

LONG = 10**9  # steps left: long enough for any step time


class Compiled(nn.Module):
    """Stands for torch.compile's result (the tests check which network the loss calls)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.inner = net


def _variants(mode: str = "auto", tune: bool = True):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
    made = []

    def compile_fn(net):
        made.append(Compiled(net))
        return made[-1]

    return model, StepVariants(model, model, mode, tune=tune, compile_fn=compile_fn), made


def _trial(v: StepVariants, times, steps_left: int = LONG, drift: float = 0.0) -> list:
    """Takes steps until ``v`` settles, each of ``times[variant on trial]`` seconds, x (1 +
    drift x step) for a machine whose load grows; the untimed ones (the warm-up, the compile)
    100x longer. Returns the variant of each step."""
    taken = []
    while not v.settled:
        untimed = v._plan[0][1] is False
        t = times[v.choice] * (1 + drift * len(taken)) * (100 if untimed else 1)
        taken.append(v.choice)
        v.observe(t, steps_left)
    return taken


def _channels_last(model: nn.Module) -> bool:
    w = model[0].weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize("times,want", [
    ((1.0, 0.5, 0.9), "channels_last"),
    ((1.0, 0.9, 0.4), "compile"),
    ((1.0, 1.0 / MIN_GAIN + 0.01, 0.95), "eager"),  # the best gains less than MIN_GAIN
    ((1.0, 1.2, 1.5), "eager"),
])
def test_auto_keeps_the_fastest_variant_when_it_gains_enough(times, want):
    model, v, made = _variants()
    assert not v.settled and v.choice == "eager" and v.net is model
    taken = _trial(v, dict(zip(speed.VARIANTS, times)))
    warm = speed.WARMUP_STEPS + speed.TRIAL_STEPS
    assert taken[:warm] == ["eager"] * warm
    assert taken[warm:warm + 2] == ["channels_last", "compile"]  # untimed: the compile
    assert taken[warm + 2:] == list(speed.VARIANTS) * speed.ROUNDS  # interleaved rounds
    assert v.settled and v.choice == want
    assert v.seconds == dict(zip(speed.VARIANTS, times))  # the median of the timed steps
    assert _channels_last(model) == (want == "channels_last")
    assert (v.net is made[0]) if want == "compile" else (v.net is model)
    assert len(made) == 1  # compiled once, kept
    v.observe(1.0, LONG)  # settled: later steps change nothing
    assert v.choice == want


def test_variant_on_trial_sets_the_model_up():
    model, v, made = _variants()
    formats = {}
    while not v.settled:
        formats.setdefault(v.choice, []).append((_channels_last(model), v.net))
        v.observe({"eager": 1.0, "channels_last": 0.5, "compile": 0.9}[v.choice], LONG)
    assert all(f == (False, model) for f in formats["eager"])
    assert all(f == (True, model) for f in formats["channels_last"])
    assert all(f == (False, made[0]) for f in formats["compile"])


def test_interleaved_rounds_see_through_a_growing_load():
    """The load grows 5% a step: timed one after the other, the last variant would look
    slowest; interleaved, compile (0.7x eager) still wins."""
    model, v, made = _variants()
    _trial(v, {"eager": 1.0, "channels_last": 0.95, "compile": 0.7}, drift=0.05)
    assert v.choice == "compile"


def test_auto_stays_eager_on_a_run_too_short_to_repay_a_compile():
    model, v, made = _variants()
    left = int(speed.MIN_AUTO_SECONDS / 0.1) - 1  # 0.1 s a step: just under the bar
    taken = _trial(v, {"eager": 0.1}, left)
    assert len(taken) == speed.WARMUP_STEPS + speed.TRIAL_STEPS
    assert v.settled and v.choice == "eager" and not made and v.seconds == {"eager": 0.1}


def test_on_compiles_from_the_start_and_off_or_untuned_auto_stay_eager():
    model, v, made = _variants("on")
    assert v.settled and v.choice == "compile" and v.net is made[0]
    for mode, tune in (("off", True), ("auto", False)):
        model, v, made = _variants(mode, tune)
        assert v.settled and v.choice == "eager" and v.net is model and not made


def test_a_failing_variant_on_trial_falls_back_to_eager():
    model, v, made = _variants()
    assert not v.failed(RuntimeError("eager itself failed"))  # the caller raises it
    while v.choice != "compile":
        v.observe(1.0, LONG)
    assert v.failed(RuntimeError("InductorError: no C++ compiler\nmore lines"))
    assert v.settled and v.choice == "eager" and v.net is model and not _channels_last(model)
    assert not v.failed(RuntimeError("later"))  # settled: not retried


def test_compile_setting_is_validated_and_not_hashed():
    with pytest.raises(ParameterError, match="compile='fast' is invalid"):
        DistillConfig(teacher="t.pt", audio=".", compile="fast").validate()
    assert DistillConfig(compile="on").hash() == DistillConfig(compile="off").hash()


def test_compiled_network_trains_like_eager_with_the_same_dropout_masks():
    """compile_network (inductor) of a small conv net with dropout: the same outputs in train
    mode from the same torch seed (fallback_random) and the same gradients, as eager."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(16), nn.Dropout(0.5)).train()
    x = torch.randn(4, 1, 6, 6)
    net(x)  # materialise the lazy layer
    compiled = speed.compile_network(net)
    outputs, grads = [], []
    for forward in (net, compiled):
        net.zero_grad()
        torch.manual_seed(1)
        y = forward(x)
        y.square().sum().backward()
        outputs.append(y.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert (outputs[0] == 0).any()  # dropout is on
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
