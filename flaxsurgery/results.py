"""Experiment results: per-arm statistics over seeds, markdown tables and learning-curve plots.

Shared by the RL experiments (:mod:`flaxsurgery.rl.experiment`) and the digits classifier
(:mod:`flaxsurgery.digits`): both write the same ``summary.json`` format, where "return" is
whatever the curve measures (greedy return, test accuracy). SciPy and matplotlib are imported
only where they are used.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def ci95(values: np.ndarray) -> np.ndarray:
    """Half-width of the 95% Student-t interval of the mean over axis 0 (seeds)."""
    from scipy import stats

    n = values.shape[0]
    return stats.t.ppf(0.975, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)


def summarise_arm(steps: np.ndarray, returns: np.ndarray, threshold: float) -> dict:
    """One arm's statistics from its returns (seeds, evaluations) at ``steps``.

    ``auc`` is each seed's mean over the evaluations, averaged over seeds, with its 95%
    interval; ``steps_to_threshold`` the first step whose mean reaches ``threshold`` (or None).
    """
    mean = returns.mean(axis=0)
    auc_per_seed = returns.mean(axis=1)
    auc, auc_half = float(auc_per_seed.mean()), float(ci95(auc_per_seed))
    reached = np.flatnonzero(mean >= threshold)
    return {
        "steps": [int(s) for s in steps],
        "return_mean": [float(m) for m in mean],
        "return_ci95": [float(h) for h in ci95(returns)],
        "first_return": float(mean[0]),
        "final_return": float(mean[-1]),
        "auc": auc,
        "auc_ci95": [auc - auc_half, auc + auc_half],
        "steps_to_threshold": int(steps[reached[0]]) if reached.size else None,
    }


def paired_difference(arm: np.ndarray, scratch: np.ndarray) -> dict:
    """Per-seed differences from scratch (seed i of both arms shares its keys), as means with
    95% intervals: of the AUC and of the final return."""

    def interval(d: np.ndarray) -> dict:
        half = float(ci95(d))
        return {"mean": float(d.mean()), "ci95": [float(d.mean()) - half, float(d.mean()) + half]}

    return {"auc": interval(arm.mean(axis=1) - scratch.mean(axis=1)),
            "final": interval(arm[:, -1] - scratch[:, -1])}


def markdown_table(summary: dict, measure: str = "return", digits: int = 1) -> str:
    """The arms as a markdown table: first, AUC with CI, steps to threshold, final; then the
    paired differences from scratch, when the summary has them."""
    f = f"{{:.{digits}f}}".format
    lines = [
        f"| arm | first {measure} | AUC (95% CI) | steps to {summary['threshold']:g} | final {measure} |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, a in summary["arms"].items():
        lo, hi = a["auc_ci95"]
        reached = "never" if a["steps_to_threshold"] is None else f"{a['steps_to_threshold']:,}"
        lines.append(f"| {arm} | {f(a['first_return'])} | {f(a['auc'])} ({f(lo)}, {f(hi)}) "
                     f"| {reached} | {f(a['final_return'])} |")
    g = f"{{:+.{digits}f}}".format
    for arm, p in summary.get("paired_vs_scratch", {}).items():
        auc, final = p["auc"], p["final"]
        lines.append(f"\n{arm} - scratch, paired by seed: AUC {g(auc['mean'])} ({g(auc['ci95'][0])}, "
                     f"{g(auc['ci95'][1])}), final {measure} {g(final['mean'])} "
                     f"({g(final['ci95'][0])}, {g(final['ci95'][1])})")
    return "\n".join(lines)


RULES = {"transplant": "preserving", "transplant_seed": "seeds'", "scratch": "scratch"}


def _decimals(summary: dict) -> int:
    """Decimals that show three significant digits of the summary's largest mean return."""
    largest = max(abs(m) for a in summary["arms"].values() for m in a["return_mean"])
    return max(0, 2 - int(np.floor(np.log10(largest)))) if largest > 0 else 1


def rules_table(summaries: list[dict]) -> str:
    """One markdown table over experiments: the preserving rules, the seeds' rules and scratch.

    Per experiment and arm: first return, AUC with its 95% interval, the paired AUC difference
    from scratch (where the summary has it), steps to the experiment's threshold, and final
    return; ``old final`` is the old agent's last return, the level a transplant starts from
    when it keeps the function.
    """
    lines = [
        ("| experiment (threshold) | old final | rules | first | AUC (95% CI) "
         "| AUC - scratch, paired (95% CI) | steps to threshold | final |"),
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        f = f"{{:.{_decimals(summary)}f}}".format
        g = f"{{:+.{_decimals(summary)}f}}".format
        old_final = f(summary["arms"]["old"]["final_return"])
        for arm, rules in RULES.items():
            a = summary["arms"][arm]
            lo, hi = a["auc_ci95"]
            paired = summary.get("paired_vs_scratch", {}).get(arm)
            difference = "" if arm == "scratch" else "n/a"
            if paired:
                d = paired["auc"]
                difference = f"{g(d['mean'])} ({g(d['ci95'][0])}, {g(d['ci95'][1])})"
            reached = "never" if a["steps_to_threshold"] is None else f"{a['steps_to_threshold']:,}"
            lines.append(
                f"| {summary['experiment']} ({summary['threshold']:g}) | {old_final} | {rules} "
                f"| {f(a['first_return'])} | {f(a['auc'])} ({f(lo)}, {f(hi)}) | {difference} "
                f"| {reached} | {f(a['final_return'])} |"
            )
    return "\n".join(lines)


def plot(summary: dict, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """Mean curve with its 95% band per arm; the old phase drawn before the transplant (step 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(summary: dict, folder: Path, **plot_labels) -> Path:
    """Writes ``summary.json`` and ``curves.png`` into `folder`; returns the plot's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, folder / "curves.png", **plot_labels)
    return folder / "curves.png"
