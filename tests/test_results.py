"""Per-arm statistics, tables and plots shared by the experiments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import results


def test_summary_statistics():
    steps = np.array([0, 10, 20])
    returns = np.array([[0.0, 5.0, 10.0], [2.0, 7.0, 12.0]])
    arm = results.summarise_arm(steps, returns, threshold=6.0)
    assert arm["first_return"] == 1.0 and arm["final_return"] == 11.0
    assert arm["steps_to_threshold"] == 10 and arm["auc"] == pytest.approx(6.0)
    lo, hi = arm["auc_ci95"]
    assert lo < 6.0 < hi
    assert results.summarise_arm(steps, returns, threshold=99.0)["steps_to_threshold"] is None
    assert arm["return_range"] == [1.0, 11.0]  # the mean curve is 1, 6, 11


def test_return_ranges_are_added_to_an_older_summary_from_its_curves():
    steps = np.array([0, 10, 20])
    returns = np.array([[-3.0, -9.0, 1.0], [-5.0, -1.0, 3.0]])  # the mean curve: -4, -5, 2
    arm = results.summarise_arm(steps, returns, threshold=0.0)
    older = {"experiment": "t", "arms": {"a": {k: v for k, v in arm.items() if k != "return_range"}}}
    completed = results.with_return_ranges(older)
    assert completed["arms"]["a"] == arm and list(completed["arms"]["a"]) == list(arm)
    assert "return_range" not in older["arms"]["a"]  # the caller's summary is kept


def test_lowest_point_is_the_mean_curves_first_minimum():
    steps = np.array([0, 10, 20, 30])
    returns = np.array([[5.0, 1.0, 3.0, 1.0], [5.0, 3.0, 1.0, 3.0]])  # mean 5, 2, 2, 2
    arm = results.summarise_arm(steps, returns, threshold=6.0)
    assert arm["lowest_return"] == 2.0 and arm["lowest_step"] == 10


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
    assert "| transplant | 2/3 | 1 | 0.400 | 0.500 (" in table
    assert "| scratch | 2/3 | 1 | 0.200 |" in table
    assert "transplant - scratch, paired by seed: steps to threshold n/a; AUC +0.100" in table
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
    assert rows[0].startswith("| small (0.6) | 0.600 | preserving | 1/2 | > 1 | n/a | 0.200 | 0.400 (")
    assert rows[0].endswith("| +0.000 (+0.000, +0.000) | 0.600 |")
    assert rows[3].startswith("| large (0.6) | 60.0 | preserving | 2/2 | 0 | n/a | 20.0 | 40.0 (")
    assert rows[3].endswith("| n/a | 60.0 |") and "| scratch |" in rows[5]


def test_versus_pairs_each_arm_with_the_base_by_seed():
    steps = np.array([0, 10])
    base = np.array([[0.0, 2.0], [0.0, 4.0], [0.0, 6.0]])
    better = base + np.array([[1.0], [2.0], [3.0]])  # above the base on every seed, by 1, 2, 3
    summary = {"threshold": 5.0, "arms": {
        "continue": results.summarise_arm(steps, base, 5.0),
        "continue_copy": results.summarise_arm(steps, better, 5.0),
        "old": results.summarise_arm(steps, base, 5.0)}}
    pairs = results.versus(summary, "continue", ("continue", "continue_copy", "continue_seed"))
    assert list(pairs) == ["continue_copy"]  # the base itself and absent arms are left out
    pair = pairs["continue_copy"]
    assert pair["auc"]["mean"] == pytest.approx(2.0) and pair["final"]["mean"] == pytest.approx(2.0)
    # Paired: the seeds' differences (1, 2, 3) have sd 1, so the interval is t(0.975, 2) / sqrt(3)
    # wide each side; unpaired, the arms' spread (2 per seed) would hide the lead.
    assert pair["auc"]["ci95"] == pytest.approx([2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5])
    # P(copy > continue) on final returns (3, 6, 9) against (2, 4, 6): 6 pairs won, one tied.
    assert pair["probability_of_improvement"]["final"]["value"] == pytest.approx(6.5 / 9)
    # Seeds reaching 5: copy at step 10 on seeds 2 and 3 (6, 9), the base on seed 3 only.
    assert pair["steps_to_threshold"]["censored"] == {"arm_only": 0, "scratch_only": 1, "both": 1}

    table = results.versus_table(summary, {"continue": "mean", "continue_copy": "copy",
                                           "continue_seed": "fresh"}, "continue", pairs)
    rows = table.splitlines()
    assert "| AUC - continue |" in rows[0] and "| P(arm > continue), AUC |" in rows[0]
    assert len(rows) == 4 and rows[2].startswith("| continue | mean | 1/3 |")
    assert rows[2].endswith("| n/a | n/a |") and "| +2.00 (" in rows[3]


def _write_grow(tmp_path, offsets: dict[str, float]) -> tuple[dict, Path]:
    """A two-seed run "grow" under `tmp_path`, each arm the same curve raised by its offset."""
    steps = np.array([0, 10])
    base = np.array([[0.0, 2.0], [0.0, 4.0]])
    folder = tmp_path / "grow"
    summary = {"experiment": "grow", "seeds": 2, "steps_per_phase": 10, "threshold": 5.0,
               "arms": {arm: results.summarise_arm(steps, base + offset, 5.0)
                        for arm, offset in offsets.items()}}
    results.write(summary, folder, xlabel="steps", ylabel="return", title="grow")
    return summary, folder


def _rules_table(tmp_path, *args, check=True) -> subprocess.CompletedProcess:
    script = Path(__file__).parents[1] / "examples" / "rules_table.py"
    return subprocess.run([sys.executable, str(script), "--results", str(tmp_path), *args],
                          capture_output=True, text=True, check=check)


def test_starts_table_writes_its_figures_and_curves_beside_the_summary(tmp_path):
    summary, folder = _write_grow(tmp_path, {"old": 0, "scratch": 1, "continue": 0,
                                             "continue_seed": 2})
    run = _rules_table(tmp_path, "--starts", "grow")
    written = json.loads((folder / "starts.json").read_text())
    assert written["base"] == "continue" and set(written["versus_base"]) == {"continue_seed", "scratch"}
    assert written["versus_base"]["continue_seed"]["auc"]["mean"] == pytest.approx(2.0)
    assert (folder / "starts.png").stat().st_size > 0
    assert run.stdout.splitlines()[2].startswith("| continue |")

    del summary["arms"]["continue"]
    results.write(summary, folder, xlabel="steps", ylabel="return", title="grow")
    run = _rules_table(tmp_path, "--starts", "grow", check=False)
    assert run.returncode != 0 and "has no arm continue" in run.stderr


def test_kept_table_pairs_the_restarted_arms_with_the_whole_transplant(tmp_path):
    _, folder = _write_grow(tmp_path, {"old": 0, "scratch": 3, "transplant": 0,
                                       "transplant_features": 1})
    run = _rules_table(tmp_path, "--kept", "grow")
    written = json.loads((folder / "kept.json").read_text())
    assert written["base"] == "transplant"
    assert set(written["kept"]) == {"transplant", "transplant_features", "scratch"}
    assert written["versus_base"]["transplant_features"]["final"]["mean"] == pytest.approx(1.0)
    assert written["versus_base"]["scratch"]["final"]["mean"] == pytest.approx(3.0)
    assert (folder / "kept.png").stat().st_size > 0
    header, _, first, *_ = run.stdout.splitlines()
    assert "| keeps of the old network |" in header and first.startswith("| transplant |")
    run = _rules_table(tmp_path, "--kept", "shrink", check=False)
    assert run.returncode != 0 and "shrink/summary.json: name an experiment" in run.stderr


def test_steps_to_threshold_counts_seeds_that_never_reach_it_as_censored():
    steps = np.array([0, 10, 20, 30])
    arm = np.array([[0, 6, 7, 8], [0, 0, 0, 5], [0, 0, 0, 0.0]])  # 10, 30, never
    scratch = np.array([[0, 0, 6, 6], [0, 0, 0, 0], [0, 0, 0, 0.0]])  # 20, never, never
    values, reached = results.seed_steps_to_threshold(steps, arm, threshold=5.0)
    assert values.tolist() == [10, 30, 40] and reached.tolist() == [True, True, False]

    summary = results.summarise_arm(steps, arm, threshold=5.0)
    assert summary["reached"] == 2 and summary["seed_steps_to_threshold"] == [10, 30, None]
    assert summary["median_steps_to_threshold"] == 30
    assert results.summarise_arm(steps, scratch, 5.0)["median_steps_to_threshold"] is None

    # Differences -10, -10, 0 (the both-censored pair counts 40 - 40): mean -20/3, sample
    # sd 10/sqrt(3), 95% half-width t(0.975, 2) * sd / sqrt(3) = 4.302653 * 10 / 3.
    d = results.paired_difference(arm, scratch, steps, threshold=5.0)["steps_to_threshold"]
    half = 4.302653 * 10 / 3
    assert d["mean"] == pytest.approx(-20 / 3)
    assert d["ci95"] == pytest.approx([-20 / 3 - half, -20 / 3 + half], abs=1e-4)
    assert d["censored"] == {"arm_only": 0, "scratch_only": 1, "both": 1}


def test_headline_leads_with_seeds_reaching_and_the_paired_steps():
    steps = np.array([0, 10, 20, 30])
    arm = np.array([[0, 6, 7, 8], [0, 0, 0, 5], [0, 0, 0, 0.0]])
    scratch = np.array([[0, 0, 6, 6], [0, 0, 0, 0], [0, 0, 0, 0.0]])
    summary = {"experiment": "t", "env": "E", "seeds": 3, "steps_per_phase": 30, "threshold": 5.0,
               "arms": {"old": results.summarise_arm(steps, arm, 5.0),
                        "transplant": results.summarise_arm(steps, arm, 5.0),
                        "scratch": results.summarise_arm(steps, scratch, 5.0)},
               "paired_vs_scratch": {"transplant": results.paired_difference(arm, scratch, steps, 5.0)}}
    lines = results.headline(summary).splitlines()
    assert lines[0].endswith("seeds reaching 5: old 2/3, transplant 2/3, scratch 1/3")
    assert lines[1].strip().startswith("transplant - scratch, steps to 5, paired by seed: -7 (-21, +8)")
    assert "[censored: arm 0, scratch 1, both 1]" in lines[1]
    row = results.headline_table([summary]).splitlines()[2]
    assert row.startswith("| t (5) | 3 x 30 | 2/3 | 1/3 | -7 (-21, +8) [censored: arm 0, scratch 1, both 1] |")


def test_continuation_and_arms_tables_show_the_dip_and_the_paired_differences():
    steps = np.array([0, 10, 20])
    curves = {"old": np.array([[0.0, 5.0, 10.0], [0.0, 5.0, 10.0]]),
              "scratch": np.array([[0.0, 2.0, 9.0], [0.0, 4.0, 9.0]]),
              "transplant": np.array([[10.0, 1.0, 9.0], [10.0, 3.0, 9.0]]),
              "continue": np.array([[10.0, 8.0, 10.0], [10.0, 6.0, 10.0]]),
              "control": np.array([[10.0, 9.0, 10.0], [10.0, 9.0, 10.0]])}
    arms = {arm: results.summarise_arm(steps, r, 9.5) for arm, r in curves.items()}
    summary = {
        "experiment": "t", "seeds": 2, "steps_per_phase": 20, "threshold": 9.5, "arms": arms,
        "paired_vs_scratch": {arm: results.paired_difference(curves[arm], curves["scratch"])
                              for arm in ("transplant", "continue")},
        "paired_vs_control": {"continue": results.paired_difference(curves["continue"],
                                                                    curves["control"])},
        "targets": {"dip": {"floor": 8.5, "met": False}},
    }
    row = results.continuation_table([summary]).splitlines()[2]
    # old final 10; lowest points: control 9 (10), continue 7 (10), transplant 2 (10), scratch 0
    # AUC per seed: continue 28/3, 26/3; scratch 11/3, 13/3; control 29/3, 29/3.
    assert row == ("| t (9.5) | 10.0 | 9.0 (10) | 7.0 (10) | 2.0 (10) | 0.0 (0) | 8.5 | no "
                   "| +5.0 (-3.5, +13.5) | -0.7 (-4.9, +3.6) | +0.0 (+0.0, +0.0) |")
    table = results.arms_table(summary, {"continue": "all", "control": "no surgery"})
    continued, control = table.splitlines()[2:]
    assert continued.startswith("| continue | all | 2/2 | 7.0 (10) | 9.0 (")
    assert "| +5.0 (-3.5, +13.5) | -0.7 (-4.9, +3.6) | 10.0 (10.0, 10.0) |" in continued
    assert control.startswith("| control | no surgery | 2/2 | 9.0 (10) |")
    headline = results.headline_table([summary]).splitlines()[2:]
    assert [line.split(" |")[0] for line in headline] == ["| t (9.5)", "| t (9.5), continued"]


# ----------------------------------------------------------------------------- rliable-style


def brute_iqm(values) -> float:
    """The mean of what is left once the floor(n/4) lowest and highest runs are removed."""
    left = sorted(values)
    for _ in range(len(values) // 4):
        left.pop(0)
        left.pop()
    return sum(left) / len(left)


def brute_improvement(x, y) -> float:
    """P(X > Y) pair by pair, a tie counting half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)
    return wins / (len(x) * len(y))


@pytest.mark.parametrize("n", range(1, 10))
def test_iqm_and_probability_of_improvement_match_brute_force(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, n).astype(float)  # few distinct values: ties on both sides
    y = rng.integers(0, 4, n + 2).astype(float)
    assert results.iqm(x) == pytest.approx(brute_iqm(list(x)))
    assert results.probability_of_improvement(x, y) == pytest.approx(brute_improvement(x, y))
    stacked = np.stack([x, x[::-1] + 1])  # leading axes are batches
    assert results.iqm(stacked).tolist() == pytest.approx([brute_iqm(list(r)) for r in stacked])


def test_iqm_is_scipys_trimmed_mean_at_a_quarter():
    from scipy import stats

    values = np.random.default_rng(0).normal(size=(20,))
    assert results.iqm(values) == pytest.approx(stats.trim_mean(values, 0.25))


def test_bootstrap_interval_is_the_resampling_distributions_percentiles():
    # Resampling (0, 1, 2) with replacement: the mean is 0 or 2 with probability 1/27 each
    # (3.7% > 2.5%), so the 95% percentile interval is exactly [0, 2].
    assert results.bootstrap_ci95(lambda s: s.mean(axis=-1), np.array([0.0, 1.0, 2.0])) == [0, 2]
    # Every resampling of (5, 5, 5) has IQM 5; every pair of (1) and (0) is a win.
    assert results.bootstrap_ci95(results.iqm, np.array([5.0, 5.0, 5.0])) == [5.0, 5.0]
    assert results.bootstrap_ci95(results.probability_of_improvement, np.array([1.0]),
                                  np.array([0.0])) == [1.0, 1.0]
    sample = np.random.default_rng(1).normal(size=20)
    first = results.bootstrap_ci95(results.iqm, sample, seed=3)
    assert first == results.bootstrap_ci95(results.iqm, sample, seed=3)  # seeded: repeatable
    assert first != results.bootstrap_ci95(results.iqm, sample, seed=4)
    assert first[0] < results.iqm(sample) < first[1]


def aggregate_summary(extra_arm: bool = False) -> dict:
    steps = np.array([0, 10, 20])
    rng = np.random.default_rng(0)
    curves = {"old": rng.normal(size=(8, 3)), "transplant": rng.normal(1.0, size=(8, 3)),
              "scratch": rng.normal(size=(8, 3))}
    if extra_arm:
        curves["continue"] = rng.normal(2.0, size=(8, 3))
    arms = {arm: results.summarise_arm(steps, r, 0.5) for arm, r in curves.items()}
    final = rng.normal(size=8)  # a summary that kept the mean curve and the final returns only
    arms["final_only"] = {"return_mean": [0.0, 0.0, float(final.mean())],
                          "final_per_seed": [float(v) for v in final]}
    return {"experiment": "t", "seeds": 8, "steps_per_phase": 20, "threshold": 0.5, "arms": arms}


def test_aggregates_from_a_summarys_per_seed_data():
    summary = aggregate_summary()
    found = results.aggregates(summary)
    transplant = np.array(summary["arms"]["transplant"]["returns"])
    scratch = np.array(summary["arms"]["scratch"]["returns"])
    final_only = summary["arms"]["final_only"]["final_per_seed"]
    assert set(found["iqm"]) == {"transplant", "scratch", "final_only"}  # old is left out
    auc = found["iqm"]["transplant"]["auc"]
    assert auc["value"] == pytest.approx(brute_iqm(list(transplant.mean(axis=1))))
    assert auc["ci95"][0] <= auc["value"] <= auc["ci95"][1]
    assert set(found["iqm"]["final_only"]) == {"final"}  # no curves: no AUC
    better = found["probability_of_improvement_vs_scratch"]
    assert set(better) == {"transplant", "final_only"}
    assert better["transplant"]["final"]["value"] == pytest.approx(
        brute_improvement(transplant[:, -1], scratch[:, -1]))
    assert better["final_only"]["final"]["value"] == pytest.approx(
        brute_improvement(final_only, scratch[:, -1]))
    # Every statistic draws on its own generator: another arm changes none of these.
    more = results.aggregates(aggregate_summary(extra_arm=True))
    assert more["iqm"]["transplant"] == found["iqm"]["transplant"]
    assert more["probability_of_improvement_vs_scratch"]["transplant"] == better["transplant"]


def test_aggregates_are_written_into_summaries_in_place_without_training(tmp_path):
    summary = aggregate_summary()
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    results.main(["--aggregates", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(results.with_aggregates(summary)))
    assert "aggregates" not in summary  # the caller's summary is kept
    table = results.aggregates_table([written], arms=("transplant", "scratch"))
    rows = table.splitlines()[2:]
    value = written["aggregates"]["probability_of_improvement_vs_scratch"]["transplant"]["auc"]
    assert rows[0].startswith("| t | transplant | ")
    assert f"| {value['value']:.2f} ({value['ci95'][0]:.2f}, {value['ci95'][1]:.2f}) |" in rows[0]
    assert rows[1].startswith("| t | scratch | ") and len(rows) == 2


def test_falls_after_reaching_counts_seeds_watched_long_enough():
    steps = np.arange(0, 60, 10)
    returns = np.array([[0, 500, 480, 250, 500, 500],  # reaches at 10, falls at 30: fell
                        [0, 0, 500, 400, 400, 400],  # reaches at 20, stays above 300
                        [0, 0, 0, 0, 500, 100],  # reaches at 40: too late to watch 20 steps
                        [0, 0, 0, 0, 0, 0.0]])  # never reaches
    assert results.falls_after_reaching(steps, returns, 475, 300, window=20) == {
        "watched": 2, "fell": 1}
    # Watching 10 steps: the first seed's fall comes 20 after, the third's 10 after.
    assert results.falls_after_reaching(steps, returns, 475, 300, window=10) == {
        "watched": 3, "fell": 1}
    summary = {"threshold": 475, "steps_per_phase": 50,
               "arms": {"old": results.summarise_arm(steps, returns, 475),
                        "continue": results.summarise_arm(steps, returns, 475)}}
    rows = results.falls_table(summary, floor=300, window=20).splitlines()
    assert rows[2] == "| continue | 2 | 1 | 30 |" and len(rows) == 3
