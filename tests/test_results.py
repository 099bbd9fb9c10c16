"""Per-arm statistics, tables and plots shared by the experiments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flaxsurgery import results


def test_summary_statistics():
    steps = np.array([0, 10, 20])
    returns = np.array([[0.0, 5.0, 10.0], [2.0, 7.0, 12.0]])
    arm = results.summarise_arm(steps, returns, threshold=6.0)
    assert arm["first_return"] == 1.0 and arm["final_return"] == 11.0
    assert arm["steps_to_threshold"] == 10 and arm["auc"] == pytest.approx(6.0)
    lo, hi = arm["auc_ci95"]
    assert lo < 6.0 < hi
    assert results.summarise_arm(steps, returns, threshold=99.0)["steps_to_threshold"] is None


def test_paired_difference_and_table(tmp_path):
    steps = np.array([0, 1])
    scratch = np.array([[0.1, 0.5], [0.2, 0.6], [0.3, 0.7]])
    arm = scratch + np.array([[0.1, 0.0], [0.2, 0.0], [0.3, 0.0]])  # better early, equal at the end
    paired = results.paired_difference(arm, scratch)
    assert paired["auc"]["mean"] == pytest.approx(0.1) and paired["final"]["mean"] == pytest.approx(0.0)
    summary = {"experiment": "t", "seeds": 3, "steps_per_phase": 1, "threshold": 0.6,
               "arms": {"transplant": results.summarise_arm(steps, arm, 0.6),
                        "scratch": results.summarise_arm(steps, scratch, 0.6)},
               "paired_vs_scratch": {"transplant": paired}}
    table = results.markdown_table(summary, measure="accuracy", digits=3)
    assert "| transplant | 0.400 | 0.500 (" in table and "| scratch | 0.200 |" in table
    assert "transplant - scratch, paired by seed: AUC +0.100" in table
    plot = results.write(summary, tmp_path / "t", xlabel="steps", ylabel="accuracy", title="t")
    assert plot.stat().st_size > 0
    assert json.loads((tmp_path / "t" / "summary.json").read_text()) == summary


def test_rules_table_has_one_row_per_experiment_and_rules():
    steps = np.array([0, 1])
    low, high = np.array([[0.1, 0.5], [0.3, 0.7]]), np.array([[10.0, 50.0], [30.0, 70.0]])
    arms = ("old", "transplant", "transplant_seed", "scratch")

    def summary(name, returns, paired):
        out = {"experiment": name, "threshold": 0.6,
               "arms": {arm: results.summarise_arm(steps, returns, 0.6) for arm in arms}}
        if paired:
            out["paired_vs_scratch"] = {arm: results.paired_difference(returns, returns)
                                        for arm in ("transplant", "transplant_seed")}
        return out

    table = results.rules_table([summary("small", low, True), summary("large", high, False)])
    rows = table.splitlines()[2:]
    assert len(rows) == 6
    assert rows[0].startswith("| small (0.6) | 0.600 | preserving | 0.200 | 0.400 (")
    assert "| +0.000 (+0.000, +0.000) | 1 | 0.600 |" in rows[0]
    assert rows[3].startswith("| large (0.6) | 60.0 | preserving | 20.0 | 40.0 (")
    assert "| n/a | 0 | 60.0 |" in rows[3] and "| scratch |" in rows[5]
