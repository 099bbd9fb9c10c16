"""Shared by the tests: how many property-test examples to run, and the MLP they use."""

from __future__ import annotations

import os

import flax.linen as nn

# `make test-fast` sets FLAXSURGERY_FAST=1: the property tests run a few examples each.
FAST = os.environ.get("FLAXSURGERY_FAST") == "1"


def examples(full: int) -> int:
    """The number of hypothesis examples: `full` in `make test`, an eighth in `make test-fast`."""
    return max(3, full // 8) if FAST else full


class MLP(nn.Module):
    features: tuple

    @nn.compact
    def __call__(self, x):
        for f in self.features[:-1]:
            x = nn.relu(nn.Dense(f)(x))
        return nn.Dense(self.features[-1])(x)
