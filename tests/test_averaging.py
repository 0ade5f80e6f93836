"""Weight averaging (EMA) against the formula in numpy, and a killed EMA run resuming exactly."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pyssondo.train.averaging import WeightAverage


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_average_follows_the_formula_with_its_warm_up():
    model, decay = _model(), 0.9
    avg = WeightAverage(model, decay)
    ref = {k: v.detach().double().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    for step in range(1, 30):
        model.train()
        model(torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32)))  # moves BN stats
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)))
        avg.update(model, step)
        d = min(decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            w = v.detach().double().numpy()
            ref[k] = d * ref[k] + (1 - d) * w if v.is_floating_point() else w
    assert (1 + 29) / (10 + 29) < decay  # the warm-up was active for these steps
    for k, v in avg.state.items():
        np.testing.assert_allclose(v.double().numpy(), ref[k], rtol=1e-5, atol=1e-5)
    assert int(avg.state["1.num_batches_tracked"]) == 29


def test_applied_swaps_the_average_in_and_back_and_parts_round_trip():
    model = _model()
    avg = WeightAverage(model, 0.5)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        avg.state["0.weight"].add_(1.0)
    with avg.applied(model):
        assert torch.equal(model[0].weight, trained["0.weight"] + 1.0)
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    other = WeightAverage(_model(), 0.5)
    other.load_parts({"0": avg.part("0"), "1": avg.part("1")})
    assert all(torch.equal(other.state[k], avg.state[k]) for k in avg.state)
