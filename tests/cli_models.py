"""Model factories for tests/test_cli.py: ``module:factory`` names the command line takes."""

from __future__ import annotations

import jax.numpy as jnp

from tests.conftest import MLP


def factory(features: tuple, inputs: int):
    model, x = MLP(features), jnp.zeros((4, inputs))
    return model.apply, lambda key: model.init(key, x), (x,)


def small():
    """The old model: 5 inputs, 16 hidden units, 3 outputs."""
    return factory((16, 3), 5)


def grown():
    """The new model: one more input, 24 hidden units, one more output."""
    return factory((24, 4), 6)
