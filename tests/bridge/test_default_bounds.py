"""`default_bounds`: the one table of default bounds of optimizer values, by the names torch, Keras and optax use."""

from __future__ import annotations

import pytest
import torch

from bidviz.bridge.hparams import default_bounds, optimizer_hparams

UNIT = (0.0, 1.0)
BETA = (0.0, 0.999999)


@pytest.mark.parametrize(
    ("key", "bounds"),
    [
        # torch
        ("momentum", UNIT),
        ("dampening", UNIT),
        ("alpha", UNIT),
        ("rho", UNIT),
        ("lr_decay", UNIT),
        ("betas", BETA),
        ("lr", (0.0, None)),
        ("weight_decay", (0.0, None)),
        # Keras
        ("ema_momentum", UNIT),
        ("beta_1", BETA),
        ("beta_2", BETA),
        ("epsilon", (0.0, None)),
        ("learning_rate_power", (None, 0.0)),
        # optax, and other spellings
        ("b1", BETA),
        ("b2", BETA),
        ("beta1", BETA),
        ("beta2", BETA),
        ("eps", (0.0, None)),
        ("anything_else", (0.0, None)),
    ],
)
def test_default_bounds_by_name(key: str, bounds: tuple[float | None, float | None]) -> None:
    assert default_bounds(key) == bounds


def test_torch_optimizers_get_them() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizers = [
        torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.1),
        torch.optim.Adam(params),
        torch.optim.RMSprop(params, alpha=0.9),
        torch.optim.Adagrad(params, lr_decay=0.01),
    ]
    seen = {hp.name: (hp.min, hp.max) for opt in optimizers for hp in optimizer_hparams(opt)}
    for key in ("momentum", "dampening", "betas", "alpha", "lr_decay", "lr", "weight_decay", "eps"):
        assert seen[key] == default_bounds(key), key
