"""bench/gpu.py (`make gpu`) at its small size on the CPU: the rows it writes, how it merges
them into a results file, and how it stops at its time budget. The real bench/results.json is
never touched: every run here writes into a temporary folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench import gpu

ROOT = Path(__file__).resolve().parent.parent


def run_gpu_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "bench.gpu", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=900)


def test_small_run_writes_its_parts_and_keeps_other_rows(tmp_path):
    out, results_dir = tmp_path / "results.json", tmp_path / "results"
    kept = {"name": "transplant_vs_copy", "params": {"new_params": 1}, "ratio": 1.0}
    small = gpu.SIZES["small"]
    replaced = {"name": "gpu_dqn_population", "ratio": -1.0,
                "params": {"seeds": small["seeds"], "total_steps": small["population_steps"],
                           "env": "CartPole-v1", "hidden": "(120, 84)", "baseline_is": "1 seed"}}
    out.write_text(json.dumps([kept, replaced]))
    bench_results = (ROOT / "bench" / "results.json").read_bytes()

    # The continuation part runs experiments/dqn.py's continue arms, which tests/test_rl.py
    # covers; here it would add a minute of compilation to the suite, so `make gpu` alone runs it.
    done = run_gpu_script("--small", "--parts", "transplant,surgery,population", "--out", str(out),
                          "--results-dir", str(results_dir))

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows[0] == kept  # another suite's row stays where it was
    by_name = {row["name"]: row for row in rows[1:]}
    assert set(by_name) == {"gpu_transplant_vs_copy", "gpu_surgery_vs_copy", "gpu_dqn_population"}
    assert len(rows) == 4  # the earlier population row with the same params was replaced
    for row in by_name.values():
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["value"] > 0 and row["baseline"] > 0, row
        assert row["device"] == "cpu:cpu", row
    for name in ("gpu_transplant_vs_copy", "gpu_surgery_vs_copy"):
        params = by_name[name]["params"]
        assert params["new_params"] > params["old_params"] > 0
    assert by_name["gpu_surgery_vs_copy"]["measured"]["max_abs_diff"] == 0.0  # widened: exact
    assert by_name["gpu_dqn_population"]["params"]["seeds"] == small["seeds"]
    assert (ROOT / "bench" / "results.json").read_bytes() == bench_results


def test_a_budget_too_short_starts_nothing_and_says_so(tmp_path):
    out = tmp_path / "results.json"
    done = run_gpu_script("--small", "--budget-s", "1", "--out", str(out))
    assert done.returncode == 1
    for part in gpu.SHARES:
        assert f"{part}: not started: no time left in the budget" in done.stdout
    assert json.loads(out.read_text()) == []


def test_rows_merge_by_name_and_params():
    old = [{"name": "a", "params": {"n": 1}, "value": 1},
           {"name": "a", "params": {"n": 2}, "value": 2},
           {"name": "b", "params": {"n": 1}, "value": 3}]
    new = [{"name": "a", "params": {"n": 2}, "value": 20},
           {"name": "b", "params": {"n": 2}, "value": 30}]
    assert gpu.merge_rows(old, new) == [old[0], new[0], old[2], new[1]]


def test_memory_guard_stops_what_does_not_fit(monkeypatch, capsys):
    class Device:
        def memory_stats(self):
            return {"bytes_limit": 100e9}

    monkeypatch.setattr(gpu.jax, "devices", lambda: [Device()])
    assert gpu.fits_in_memory(80e9, "a tree")
    assert not gpu.fits_in_memory(81e9, "a tree")
    assert "stopped: a tree needs about 81.0 GB, the device has 100.0 GB" in capsys.readouterr().out


def test_full_size_transplants_at_least_a_billion_parameters():
    import jax

    from bench.transplant_bench import dense_chain

    full = gpu.SIZES["full"]
    new = jax.eval_shape(lambda: dense_chain(jax.random.key(0), gpu.mlp_widths(full, "new_width"), ""))
    old = jax.eval_shape(lambda: dense_chain(jax.random.key(0), gpu.mlp_widths(full, "old_width"), ""))
    assert gpu.parameters(new) >= 1e9 and gpu.parameters(new) > gpu.parameters(old)
