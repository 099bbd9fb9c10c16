"""Shared by the tests: how many property-test examples to run."""

from __future__ import annotations

import os

# `make test-fast` sets FLAXSURGERY_FAST=1: the property tests run a few examples each.
FAST = os.environ.get("FLAXSURGERY_FAST") == "1"


def examples(full: int) -> int:
    """The number of hypothesis examples: `full` in `make test`, an eighth in `make test-fast`."""
    return max(3, full // 8) if FAST else full
