"""Experiment results: per-arm statistics over seeds, markdown tables and learning-curve plots.

Shared by the RL experiments (:mod:`experiments.dqn`) and the digits classifier
(:mod:`experiments.digits`): both write the same ``summary.json`` format, where "return" is
whatever the curve measures (greedy return, test accuracy). SciPy and matplotlib are imported
only where they are used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def ci95(values: np.ndarray) -> np.ndarray:
    """Half-width of the 95% Student-t interval of the mean over axis 0 (seeds)."""
    from scipy import stats

    n = values.shape[0]
    return stats.t.ppf(0.975, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)


def seed_steps_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float,
                            censored_at: int | None = None):
    """Each seed's first evaluation step whose return reaches ``threshold``, censored.

    A seed that never reaches it within the run counts as reaching it at ``censored_at``; by
    default the next evaluation after the run, ``steps[-1] + (steps[-1] - steps[-2])``: the
    earliest step it could have, so its value is a lower bound on the truth. (The PPO
    experiments count it at the budget, ``steps[-1]``.)

    Args:
      steps: int (evaluations,), increasing and evenly spaced.
      returns: (seeds, evaluations).
      threshold: the return counted as solved.
      censored_at: the step counted for a seed that never reaches ``threshold``.

    Returns:
      ``(values, reached)``: int (seeds,) steps, censored where ``reached`` (bool (seeds,))
      is False.
    """
    above = returns >= threshold
    reached = above.any(axis=1)
    if censored_at is None:
        censored_at = steps[-1] + (steps[-1] - steps[-2])
    values = np.where(reached, steps[np.argmax(above, axis=1)], censored_at)
    return values.astype(np.int64), reached


def return_range(returns: np.ndarray) -> list[float]:
    """The lowest and highest value of the mean over seeds of `returns` (seeds, evaluations)."""
    mean = np.asarray(returns).mean(axis=0)
    return [float(mean.min()), float(mean.max())]


def with_return_ranges(summary: dict) -> dict:
    """`summary` with each arm's ``return_range`` derived from the per-seed curves it stores
    (``returns``), placed after ``return_ci95`` as :func:`summarise_arm` places it: for summaries
    written before the range was recorded, without running the experiment again."""
    arms = {}
    for name, arm in summary["arms"].items():
        derived = {"return_range": return_range(arm["returns"])}
        keys = [k for k in arm if k != "return_range"]
        at = keys.index("return_ci95") + 1
        arms[name] = {**{k: arm[k] for k in keys[:at]}, **derived, **{k: arm[k] for k in keys[at:]}}
    return {**summary, "arms": arms}


def summarise_arm(steps: np.ndarray, returns: np.ndarray, threshold: float) -> dict:
    """One arm's statistics from its returns (seeds, evaluations) at ``steps``.

    ``reached`` is how many seeds reach ``threshold`` at some evaluation;
    ``seed_steps_to_threshold`` each seed's first such step (None where never) and
    ``median_steps_to_threshold`` their median, never-reaching seeds counted as censored
    (:func:`seed_steps_to_threshold`; None when the median is censored). ``auc`` is each
    seed's mean over the evaluations, averaged over seeds, with its 95% interval;
    ``steps_to_threshold`` the first step whose mean over seeds reaches ``threshold``
    (or None). ``lowest_return`` is the mean curve's lowest point and ``lowest_step`` the
    first step where it is reached; ``return_range`` is the lowest and highest value of the mean
    curve (what a flat curve stays between). ``returns`` keeps every seed's curve.
    """
    mean = returns.mean(axis=0)
    lowest = int(np.argmin(mean))
    auc_per_seed = returns.mean(axis=1)
    auc, auc_half = float(auc_per_seed.mean()), float(ci95(auc_per_seed))
    crossed = np.flatnonzero(mean >= threshold)
    per_seed, reached = seed_steps_to_threshold(steps, returns, threshold)
    median = float(np.median(per_seed))
    return {
        "steps": [int(s) for s in steps],
        "return_mean": [float(m) for m in mean],
        "return_ci95": [float(h) for h in ci95(returns)],
        "return_range": return_range(returns),
        "first_return": float(mean[0]),
        "final_return": float(mean[-1]),
        "final_ci95": [float(mean[-1] - ci95(returns)[-1]), float(mean[-1] + ci95(returns)[-1])],
        "auc": auc,
        "auc_ci95": [auc - auc_half, auc + auc_half],
        "lowest_return": float(mean[lowest]),
        "lowest_step": int(steps[lowest]),
        "steps_to_threshold": int(steps[crossed[0]]) if crossed.size else None,
        "reached": int(reached.sum()),
        "seeds": int(returns.shape[0]),
        "seed_steps_to_threshold": [int(v) if r else None for v, r in zip(per_seed, reached)],
        "median_steps_to_threshold": median if median <= steps[-1] else None,
        "returns": [[float(r) for r in seed] for seed in returns],
    }


def interval(values: np.ndarray) -> dict:
    """Mean of ``values`` (seeds,) with its 95% Student-t interval (zero wide where all agree)."""
    half = float(ci95(values)) if np.ptp(values) > 0 else 0.0
    mean = float(values.mean())
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def paired_difference(
    arm: np.ndarray, scratch: np.ndarray, steps: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict:
    """Per-seed differences from scratch (seed i of both arms shares its keys), as means with
    95% Student-t intervals: of the AUC and of the final return and, given ``steps`` and
    ``threshold``, of the steps to threshold.

    Steps to threshold are censored (:func:`seed_steps_to_threshold`); ``censored`` counts
    the pairs where only the arm, only scratch, or both never reached the threshold. A pair
    censored on one side has a difference that is a bound: where only scratch is censored the
    arm's true lead is at least what is counted; where only the arm is, its true delay is.
    """
    out = {"auc": interval(arm.mean(axis=1) - scratch.mean(axis=1)),
           "final": interval(arm[:, -1] - scratch[:, -1])}
    if steps is not None:
        arm_steps, arm_reached = seed_steps_to_threshold(steps, arm, threshold)
        scratch_steps, scratch_reached = seed_steps_to_threshold(steps, scratch, threshold)
        out["steps_to_threshold"] = {
            **interval((arm_steps - scratch_steps).astype(float)),
            "censored": {"arm_only": int((~arm_reached & scratch_reached).sum()),
                         "scratch_only": int((arm_reached & ~scratch_reached).sum()),
                         "both": int((~arm_reached & ~scratch_reached).sum())},
        }
    return out


def falls_after_reaching(steps: np.ndarray, returns: np.ndarray, threshold: float, floor: float,
                         window: int) -> dict:
    """How many seeds fall back after reaching the threshold: of the seeds whose first
    evaluation at or above `threshold` leaves `window` steps of the run after it (``watched``),
    those with an evaluation below `floor` within those steps (``fell``).

    Args:
      steps: int (evaluations,), evenly spaced; returns: (seeds, evaluations).
    """
    span = int(window // (steps[1] - steps[0]))
    watched = fell = 0
    for seed in np.asarray(returns):
        above = np.flatnonzero(seed >= threshold)
        if above.size == 0 or above[0] + span >= len(seed):
            continue
        watched += 1
        fell += bool((seed[above[0] + 1:above[0] + 1 + span] < floor).any())
    return {"watched": watched, "fell": fell}


def falls_table(summary: dict, floor: float, window: int) -> str:
    """Per new-phase arm, :func:`falls_after_reaching` at the summary's threshold: seeds that
    reach it with `window` steps left, and how many of them fall below `floor` within them; and
    the median step at which the arm's seeds first reach it."""
    lines = [(f"| arm | seeds reaching {summary['threshold']:g} with {window:,} steps left "
              f"| of them below {floor:g} within {window:,} steps | median steps to "
              f"{summary['threshold']:g} |"),
             "|---|---:|---:|---:|"]
    for arm, a in summary["arms"].items():
        if arm == "old":
            continue
        f = falls_after_reaching(np.asarray(a["steps"]), np.asarray(a["returns"]),
                                 summary["threshold"], floor, window)
        lines.append(f"| {arm} | {f['watched']} | {f['fell']} "
                     f"| {median_cell(a, summary['steps_per_phase'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rliable-style

# The bootstrap behind the IQM and probability-of-improvement intervals: resamplings and the
# seed of the generator (fixed, so a summary rewritten from the same data gives the same
# intervals; every statistic draws from its own generator, so adding an arm changes no other).
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis (runs): the mean of the middle half, ``n // 4``
    runs cut at each end, as rliable's IQM (``scipy.stats.trim_mean(scores, 0.25)``)."""
    n = scores.shape[-1]
    cut = n // 4
    return np.sort(scores, axis=-1)[..., cut:n - cut].mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) over the last axis: the share of pairs (a run of `x`, a run of `y`) in which
    `x`'s is higher, a tie counting half (rliable's: the Mann-Whitney U statistic over
    ``n * m``). The runs are not paired: every run of one side meets every run of the other."""
    x, y = x[..., :, None], y[..., None, :]
    return (x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1))


def bootstrap_ci95(statistic, *samples: np.ndarray, reps: int = BOOTSTRAP_REPS,
                   seed: int = BOOTSTRAP_SEED) -> list[float]:
    """The 95% percentile interval of ``statistic(*samples)`` over `reps` resamplings in which
    each sample's runs are drawn with replacement, each sample on its own: rliable's stratified
    bootstrap for one task (each arm's seeds are the runs of one stratum).

    Args:
      statistic: maps arrays ``(reps, runs)``, one per sample, to ``(reps,)`` values.
      samples: one array ``(runs,)`` per argument of `statistic`.
    """
    rng = np.random.default_rng(seed)
    drawn = [s[rng.integers(0, len(s), (reps, len(s)))] for s in samples]
    values = statistic(*drawn)
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _estimate(statistic, *samples: np.ndarray) -> dict:
    return {"value": float(statistic(*samples)), "ci95": bootstrap_ci95(statistic, *samples)}


def per_seed_scores(arm: dict) -> dict[str, np.ndarray]:
    """The per-seed scores an arm's summary stores: ``auc`` (each seed's mean over the
    evaluations) and ``final`` (its last evaluation) from ``returns``, or only ``final`` from
    ``final_per_seed`` where the curves were not kept."""
    if "returns" in arm:
        returns = np.asarray(arm["returns"], float)
        return {"auc": returns.mean(axis=1), "final": returns[:, -1]}
    if "final_per_seed" in arm:
        return {"final": np.asarray(arm["final_per_seed"], float)}
    return {}


def aggregates(summary: dict, skip: tuple[str, ...] = ("old",)) -> dict:
    """rliable's aggregate statistics of a summary, from the per-seed scores it stores: each
    arm's IQM of AUC and of final return, and each arm's probability of improvement over
    ``scratch`` (P(arm > scratch)), each with its stratified-bootstrap 95% interval. Arms in
    `skip` are left out (``old`` trains on the old task). Beside, not instead of, the paired
    intervals: these compare distributions of runs, the paired ones seed by seed."""
    scores = {arm: per_seed_scores(a) for arm, a in summary["arms"].items() if arm not in skip}
    out = {"iqm": {arm: {m: _estimate(iqm, v) for m, v in s.items()}
                   for arm, s in scores.items() if s}}
    base = scores.get("scratch", {})
    out["probability_of_improvement_vs_scratch"] = {
        arm: {m: _estimate(probability_of_improvement, v, base[m]) for m, v in s.items()
              if m in base}
        for arm, s in scores.items() if arm != "scratch" and set(s) & set(base)}
    out["bootstrap"] = {"reps": BOOTSTRAP_REPS, "seed": BOOTSTRAP_SEED,
                        "interval": "95% percentile",
                        "resampled": "each arm's seeds, with replacement, each arm on its own"}
    return out


def with_aggregates(summary: dict) -> dict:
    """`summary` with :func:`aggregates` added (or replaced) under ``aggregates``; the
    caller's summary is kept."""
    return {**summary, "aggregates": aggregates(summary)}


def _estimate_cell(estimate: dict | None, f) -> str:
    if not estimate:
        return "n/a"
    return f"{f(estimate['value'])} ({f(estimate['ci95'][0])}, {f(estimate['ci95'][1])})"


def aggregates_table(summaries: list[dict], arms: tuple[str, ...]) -> str:
    """One row per experiment and arm (those of `arms` it has): the IQM of AUC and of final
    return, and P(arm > scratch) of each, with their stratified-bootstrap 95% intervals
    (:func:`aggregates`)."""
    lines = [("| experiment | arm | IQM of AUC (95% CI) | P(arm > scratch), AUC "
              "| IQM of final (95% CI) | P(arm > scratch), final |"),
             "|---|---|---:|---:|---:|---:|"]
    p = "{:.2f}".format
    for summary in summaries:
        found = summary.get("aggregates") or aggregates(summary)
        f = f"{{:.{_decimals(summary)}f}}".format
        for arm in arms:
            if arm not in found["iqm"]:
                continue
            iqms = found["iqm"][arm]
            better = found["probability_of_improvement_vs_scratch"].get(arm, {})
            lines.append(
                f"| {summary['experiment']} | {arm} | {_estimate_cell(iqms.get('auc'), f)} "
                f"| {_estimate_cell(better.get('auc'), p) if arm != 'scratch' else ''} "
                f"| {_estimate_cell(iqms.get('final'), f)} "
                f"| {_estimate_cell(better.get('final'), p) if arm != 'scratch' else ''} |")
    return "\n".join(lines)


def versus(summary: dict, base: str, arms: tuple[str, ...]) -> dict:
    """Each of `arms` that `summary` has, against arm `base` of the same run: its paired
    differences seed by seed (:func:`paired_difference`: AUC, final return, steps to the
    threshold) and its probability of improving on `base` (P(arm > base) of AUC and of final
    return, stratified-bootstrap 95% intervals, as :func:`aggregates` against scratch).

    Raises:
      KeyError: where `summary` has no arm `base`, or a compared arm keeps no per-seed
        ``returns`` (a summary written before they were kept); callers check the base first.
    """
    found = summary["arms"]
    base_returns = np.asarray(found[base]["returns"], float)
    base_scores = per_seed_scores(found[base])
    steps = np.asarray(found[base]["steps"])
    out = {}
    for arm in arms:
        if arm not in found or arm == base:
            continue
        returns = np.asarray(found[arm]["returns"], float)
        scores = per_seed_scores(found[arm])
        out[arm] = {**paired_difference(returns, base_returns, steps, summary["threshold"]),
                    "probability_of_improvement": {
                        m: _estimate(probability_of_improvement, scores[m], base_scores[m])
                        for m in ("auc", "final")}}
    return out


def versus_table(summary: dict, labels: dict[str, str], base: str, pairs: dict,
                 column: str = "new actions start as") -> str:
    """The arms `labels` names, in its order, each with its label (under the heading
    `column`): seeds that reach the threshold, first return, AUC and final return (95%
    intervals), and `pairs` (:func:`versus`): the paired AUC and final differences from `base`
    and P(arm > base) on AUC."""
    f = f"{{:.{_decimals(summary)}f}}".format
    g = f"{{:+.{_decimals(summary)}f}}".format
    p = "{:.2f}".format
    lines = [
        (f"| arm | {column} | seeds reaching {summary['threshold']:g} | first return "
         f"| AUC (95% CI) | AUC - {base} | final (95% CI) | final - {base} "
         f"| P(arm > {base}), AUC |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, label in labels.items():
        a = summary["arms"].get(arm)
        if a is None:
            continue
        paired = pairs.get(arm)
        better = paired["probability_of_improvement"]["auc"] if paired else None
        lines.append(
            f"| {arm} | {label} | {reached_cell(a)} | {f(a['first_return'])} "
            f"| {f(a['auc'])} ({f(a['auc_ci95'][0])}, {f(a['auc_ci95'][1])}) "
            f"| {_paired_cell(paired, 'auc', g)} "
            f"| {f(a['final_return'])} ({f(a['final_ci95'][0])}, {f(a['final_ci95'][1])}) "
            f"| {_paired_cell(paired, 'final', g)} | {_estimate_cell(better, p)} |")
    return "\n".join(lines)


def _steps(value) -> str:
    return "never" if value is None else f"{value:,.0f}"


def reached_cell(arm: dict) -> str:
    """``k/n`` seeds that reach the threshold, or ``n/a`` for a summary written before."""
    return f"{arm['reached']}/{arm['seeds']}" if "reached" in arm else "n/a"


def median_cell(arm: dict, budget: int) -> str:
    """The median seed's steps to threshold; ``> budget`` where more than half never reach it."""
    if "median_steps_to_threshold" not in arm:
        return "n/a"
    median = arm["median_steps_to_threshold"]
    return f"> {budget:,}" if median is None else f"{median:,.0f}"


def steps_difference_cell(paired: dict | None, base: str = "scratch") -> str:
    """Paired difference in steps to threshold with its 95% interval and censored pairs;
    ``base`` names the arm the difference is from (``paired_difference``'s ``scratch``)."""
    if not paired or "steps_to_threshold" not in paired:
        return "n/a"
    d = paired["steps_to_threshold"]
    c = d["censored"]
    cell = f"{d['mean']:+,.0f} ({d['ci95'][0]:+,.0f}, {d['ci95'][1]:+,.0f})"
    if c["arm_only"] or c["scratch_only"] or c["both"]:
        cell += f" [censored: arm {c['arm_only']}, {base} {c['scratch_only']}, both {c['both']}]"
    return cell


def headline(summary: dict) -> str:
    """The experiment's headline in three lines: seeds per arm that reach the threshold, and
    each transplant's paired difference from scratch in steps to it (95% interval)."""
    threshold = f"{summary['threshold']:g}"
    arms = ", ".join(f"{arm} {reached_cell(a)}" for arm, a in summary["arms"].items())
    lines = [(f"{summary['experiment']} ({summary.get('env', '')}, {summary['seeds']} seeds, "
              f"{summary['steps_per_phase']:,} steps per phase): seeds reaching {threshold}: {arms}")]
    for arm, p in summary.get("paired_vs_scratch", {}).items():
        lines.append(f"  {arm} - scratch, steps to {threshold}, paired by seed: "
                     f"{steps_difference_cell(p)}")
    return "\n".join(lines)


def markdown_table(summary: dict, measure: str = "return", digits: int = 1) -> str:
    """The arms as a markdown table, the headline first: seeds that reach the threshold and the
    median seed's steps to it; then first return, AUC and final return with 95% intervals.
    Last, the mean curve's lowest point and where it is. Then the paired differences from
    scratch and from the control, when the summary has them: steps to threshold first, then
    AUC and final return."""
    f = f"{{:.{digits}f}}".format
    budget = summary["steps_per_phase"]
    lines = [
        (f"| arm | seeds reaching {summary['threshold']:g} | median steps to {summary['threshold']:g} "
         f"| first {measure} | AUC (95% CI) | final {measure} (95% CI) "
         f"| lowest mean {measure} (step) |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, a in summary["arms"].items():
        lo, hi = a["auc_ci95"]
        final = f(a["final_return"])
        if "final_ci95" in a:
            final += f" ({f(a['final_ci95'][0])}, {f(a['final_ci95'][1])})"
        lowest = (f"{f(a['lowest_return'])} ({a['lowest_step']:,})" if "lowest_return" in a
                  else "n/a")
        lines.append(f"| {arm} | {reached_cell(a)} | {median_cell(a, budget)} "
                     f"| {f(a['first_return'])} | {f(a['auc'])} ({f(lo)}, {f(hi)}) | {final} "
                     f"| {lowest} |")
    g = f"{{:+.{digits}f}}".format
    for base in ("scratch", "control"):
        for arm, p in summary.get(f"paired_vs_{base}", {}).items():
            auc, final = p["auc"], p["final"]
            lines.append(f"\n{arm} - {base}, paired by seed: steps to threshold "
                         f"{steps_difference_cell(p, base)}; AUC {g(auc['mean'])} ({g(auc['ci95'][0])}, "
                         f"{g(auc['ci95'][1])}); final {measure} {g(final['mean'])} "
                         f"({g(final['ci95'][0])}, {g(final['ci95'][1])})")
    return "\n".join(lines)


RULES = {"transplant": "preserving", "transplant_seed": "seeds'", "continue": "preserving, continued",
         "scratch": "scratch"}


def _decimals(summary: dict) -> int:
    """Decimals that show three significant digits of the summary's largest mean return."""
    largest = max(abs(m) for a in summary["arms"].values() for m in a["return_mean"])
    return max(0, 2 - int(np.floor(np.log10(largest)))) if largest > 0 else 1


def rules_table(summaries: list[dict]) -> str:
    """One markdown table over experiments: the preserving rules, the seeds' rules and scratch.

    Per experiment and arm, the headline first: seeds that reach the experiment's threshold,
    the median seed's steps to it, and the paired difference from scratch in steps to it (95%
    interval; censored pairs counted); then first return, AUC with its 95% interval, the paired
    AUC difference from scratch, and final return. ``old final`` is the old agent's last
    return, the level a transplant starts from when it keeps the function. A summary with a
    ``continue`` arm (the preserving transplant going on from the old run) gets its row too.
    """
    lines = [
        ("| experiment (threshold) | old final | rules | seeds reaching | median steps "
         "| steps - scratch, paired (95% CI) | first | AUC (95% CI) "
         "| AUC - scratch, paired (95% CI) | final |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        f = f"{{:.{_decimals(summary)}f}}".format
        g = f"{{:+.{_decimals(summary)}f}}".format
        old_final = f(summary["arms"]["old"]["final_return"])
        budget = summary.get("steps_per_phase", max(summary["arms"]["old"]["steps"]))
        for arm, rules in RULES.items():
            if arm not in summary["arms"]:
                continue
            a = summary["arms"][arm]
            lo, hi = a["auc_ci95"]
            paired = summary.get("paired_vs_scratch", {}).get(arm)
            difference = steps = "" if arm == "scratch" else "n/a"
            if paired:
                d = paired["auc"]
                difference = f"{g(d['mean'])} ({g(d['ci95'][0])}, {g(d['ci95'][1])})"
                steps = steps_difference_cell(paired)
            lines.append(
                f"| {summary['experiment']} ({summary['threshold']:g}) | {old_final} | {rules} "
                f"| {reached_cell(a)} | {median_cell(a, budget)} | {steps} "
                f"| {f(a['first_return'])} | {f(a['auc'])} ({f(lo)}, {f(hi)}) | {difference} "
                f"| {f(a['final_return'])} |"
            )
    return "\n".join(lines)


def _paired_cell(paired: dict | None, measure: str, g) -> str:
    """``mean (low, high)`` of one paired difference, or ``n/a`` where there is none."""
    if not paired:
        return "n/a"
    d = paired[measure]
    return f"{g(d['mean'])} ({g(d['ci95'][0])}, {g(d['ci95'][1])})"


def _lowest_cell(arm: dict | None, f) -> str:
    """The mean curve's lowest point and its step, or ``n/a``."""
    if not arm or "lowest_return" not in arm:
        return "n/a"
    return f"{f(arm['lowest_return'])} ({arm['lowest_step']:,})"


def headline_table(summaries: list[dict]) -> str:
    """The short table over experiments: per experiment the seeds that reach its threshold
    under the preserving transplant and from scratch, and the paired differences
    (transplant - scratch, 95% intervals) in steps to threshold, AUC and final return.

    The first row of an experiment is the transplant that restarts training (arm
    ``transplant``); where the summary has a ``continue`` arm (the same transplant going on
    from the old run's buffer and counters), a second row, ``<experiment>, continued``,
    gives it in the transplant columns."""
    lines = [
        ("| experiment (threshold) | seeds x steps | transplant reaching | scratch reaching "
         "| steps to threshold, transplant - scratch | AUC, transplant - scratch "
         "| final, transplant - scratch |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        g = f"{{:+.{_decimals(summary)}f}}".format
        for arm, suffix in (("transplant", ""), ("continue", ", continued")):
            if arm not in summary["arms"]:
                continue
            paired = summary["paired_vs_scratch"][arm]
            lines.append(
                f"| {summary['experiment']} ({summary['threshold']:g}){suffix} "
                f"| {summary['seeds']} x {summary['steps_per_phase']:,} "
                f"| {reached_cell(summary['arms'][arm])} "
                f"| {reached_cell(summary['arms']['scratch'])} | {steps_difference_cell(paired)} "
                f"| {_paired_cell(paired, 'auc', g)} | {_paired_cell(paired, 'final', g)} |"
            )
    return "\n".join(lines)


def continuation_table(summaries: list[dict]) -> str:
    """One row per experiment with a ``control`` arm: the dip after the transplant, measured as
    each arm's mean-curve lowest point (with its step) for the old agent going on without
    surgery (``control``), the transplant going on from the old run (``continue``), the
    transplant that restarts training (``transplant``) and ``scratch``; the dip target (the
    continue arm at most ``tolerance`` of the old agent's final return below the control's
    lowest point); and the continue arm's paired differences (95% intervals) in AUC from
    scratch and from the control, and in final return from the control."""
    lines = [
        ("| experiment (threshold) | old final | lowest: control | lowest: continue "
         "| lowest: transplant (restart) | lowest: scratch | dip target: continue >= | met "
         "| AUC, continue - scratch | AUC, continue - control | final, continue - control |"),
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for summary in summaries:
        if "control" not in summary["arms"]:
            continue
        f = f"{{:.{_decimals(summary)}f}}".format
        g = f"{{:+.{_decimals(summary)}f}}".format
        arms = summary["arms"]
        dip = summary.get("targets", {}).get("dip")
        to_scratch = summary["paired_vs_scratch"].get("continue")
        to_control = summary.get("paired_vs_control", {}).get("continue")
        lines.append(
            f"| {summary['experiment']} ({summary['threshold']:g}) "
            f"| {f(arms['old']['final_return'])} | {_lowest_cell(arms['control'], f)} "
            f"| {_lowest_cell(arms.get('continue'), f)} "
            f"| {_lowest_cell(arms.get('transplant'), f)} | {_lowest_cell(arms['scratch'], f)} "
            f"| {f(dip['floor']) if dip else 'n/a'} "
            f"| {('yes' if dip['met'] else 'no') if dip else 'n/a'} "
            f"| {_paired_cell(to_scratch, 'auc', g)} | {_paired_cell(to_control, 'auc', g)} "
            f"| {_paired_cell(to_control, 'final', g)} |"
        )
    return "\n".join(lines)


def arms_table(summary: dict, labels: dict[str, str]) -> str:
    """The arms ``labels`` names, in its order, each with its label (what the arm keeps):
    seeds that reach the threshold, the mean curve's lowest point (step), AUC (95% interval),
    its paired differences from scratch and from the control, and the final return."""
    f = f"{{:.{_decimals(summary)}f}}".format
    g = f"{{:+.{_decimals(summary)}f}}".format
    lines = [
        (f"| arm | what it keeps | seeds reaching {summary['threshold']:g} | lowest (step) "
         "| AUC (95% CI) | AUC - scratch | AUC - control | final (95% CI) |"),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, label in labels.items():
        a = summary["arms"].get(arm)
        if a is None:
            continue
        lo, hi = a["auc_ci95"]
        final_lo, final_hi = a["final_ci95"]
        lines.append(
            f"| {arm} | {label} | {reached_cell(a)} | {_lowest_cell(a, f)} "
            f"| {f(a['auc'])} ({f(lo)}, {f(hi)}) "
            f"| {_paired_cell(summary['paired_vs_scratch'].get(arm), 'auc', g)} "
            f"| {_paired_cell(summary.get('paired_vs_control', {}).get(arm), 'auc', g)} "
            f"| {f(a['final_return'])} ({f(final_lo)}, {f(final_hi)}) |"
        )
    return "\n".join(lines)


def plot(summary: dict, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """Left: mean curve with its 95% band per arm; the old phase drawn before the transplant
    (step 0). Right, when the summary keeps every seed's curve: the share of seeds that have
    reached the threshold by each step (the headline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_seed = all("returns" in a for a in summary["arms"].values())
    fig, axes = plt.subplots(1, 2 if per_seed else 1, figsize=(12 if per_seed else 7, 4),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 2]} if per_seed else None)
    ax = axes[0, 0]
    total = summary["steps_per_phase"]
    for arm, a in summary["arms"].items():
        steps = np.array(a["steps"]) - (total if arm == "old" else 0)
        mean, half = np.array(a["return_mean"]), np.array(a["return_ci95"])
        ax.plot(steps, mean, label=arm)
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.axhline(summary["threshold"], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({summary['seeds']} seeds, 95% CI)")
    ax.legend(loc="best")
    if per_seed:
        ax = axes[0, 1]
        for arm, a in summary["arms"].items():
            steps = np.array(a["steps"])
            reached = np.maximum.accumulate(np.array(a["returns"]) >= summary["threshold"], axis=1)
            ax.step(steps - (total if arm == "old" else 0), reached.mean(axis=0), where="post",
                    label=arm)
        ax.axvline(0, color="gray", linestyle="--", linewidth=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"share of seeds that reached {summary['threshold']:g}")
        ax.set_title("seeds at the threshold so far")
    if total >= 10_000:  # thousands of steps as "100k": long axes stay readable
        from matplotlib.ticker import FuncFormatter

        for ax in axes[0]:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary: dict, folder: Path, **plot_labels) -> Path:
    """Writes ``summary.json`` and ``curves.png`` into `folder`; returns the plot's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, folder / "curves.png", **plot_labels)
    return folder / "curves.png"


def main(argv=None) -> None:
    """``python -m experiments.results --return-ranges PATH ...`` adds each arm's
    ``return_range``, ``--aggregates PATH ...`` the IQM and probability-of-improvement
    estimates (:func:`aggregates`), to summaries in place, from the per-seed data they store:
    nothing is trained again."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--return-ranges", type=Path, nargs="+", metavar="PATH",
                       help="summary.json files to complete in place")
    which.add_argument("--aggregates", type=Path, nargs="+", metavar="PATH",
                       help="summary.json files to give IQM and P(arm > scratch) in place")
    args = parser.parse_args(argv)
    complete, what = ((with_return_ranges, "return_range added to each arm") if args.return_ranges
                      else (with_aggregates, "aggregates (IQM, P(arm > scratch)) written"))
    for path in args.return_ranges or args.aggregates:
        path.write_text(json.dumps(complete(json.loads(path.read_text())), indent=2) + "\n")
        print(f"{path}: {what}")


if __name__ == "__main__":
    main()
