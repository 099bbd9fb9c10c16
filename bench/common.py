"""Timing and result records shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind}"


def seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` (its result blocked on), after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def host_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of a host-only `fn()` (nothing to block on)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def record(name: str, metric: str, value: float, baseline: float, unit: str, **params) -> dict:
    """One results.json row: `ratio = value / baseline`, both measured in the same run."""
    return {"name": name, "metric": metric, "value": value, "baseline": baseline,
            "ratio": value / baseline if baseline else float("nan"), "unit": unit,
            "device": device_name(), "params": params}
