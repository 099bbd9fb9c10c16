"""Shared by the tests: the models several test files use, how many property-test examples to
run, `transplant` eager and under `jit`, and which tests are collected.

tests/integrations/ needs torch and client libraries (SBX) that the core does not depend on:
it runs only when named on the command line (`make test-integrations`), never in `make test`.
"""

from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn
import jax

import flaxsurgery as fs

INTEGRATIONS = Path(__file__).parent / "integrations"
# `make test-fast` sets FLAXSURGERY_FAST=1: the property tests run a few examples each.
FAST = os.environ.get("FLAXSURGERY_FAST") == "1"


def examples(full: int) -> int:
    """The number of hypothesis examples: `full` in `make test`, an eighth in `make test-fast`."""
    return max(3, full // 8) if FAST else full


class MLP(nn.Module):
    """Dense layers with ReLU between them; `features` are the widths, the last the outputs."""

    features: tuple = (8, 8, 2)

    @nn.compact
    def __call__(self, obs):
        x = obs
        for f in self.features[:-1]:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.features[-1])(x)


def pytest_generate_tests(metafunc) -> None:
    """A test that takes `transplant` runs twice: eagerly and under `jax.jit` (the plan is a
    pytree argument). A parametrization, not a fixture, so that hypothesis tests take it too."""
    if "transplant" in metafunc.fixturenames:
        metafunc.parametrize("transplant", [fs.transplant, jax.jit(fs.transplant)], ids=["eager", "jit"])


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path != INTEGRATIONS:
        return None
    root = config.invocation_params.dir
    named = ((root / arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(p == INTEGRATIONS or INTEGRATIONS in p.parents for p in named) else True
