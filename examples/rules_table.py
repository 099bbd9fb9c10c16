"""Issue 6, part 4: one table of every experiment's arms, from results/*/summary.json.

Rows per experiment: the function-preserving rules (arm ``transplant``), the seeds' rules
(``transplant_seed``), the preserving transplant continued (``continue``, where a run has it)
and ``scratch``. For ``digits_classes`` the return is test accuracy. ``--headline`` gives the
short table, ``--continuation`` the dip after the transplant against the control (experiments
with a ``control`` arm), ``--ablation NAME`` the continue arms of one experiment,
``--aggregates`` the IQM and P(arm > scratch) of the restarted and continued transplants
(experiments with a ``continue`` arm), ``--falls NAME`` how many of one experiment's seeds fall
below 300 within 100,000 steps of first reaching its threshold, ``--starts NAME`` one
experiment's rules for new actions under the continuation, each paired by seed with the
preserving rule (``continue``); it also writes ``starts.json`` (the table's figures) and
``starts.png`` (their curves) beside the experiment's summary. ``--kept NAME`` does the same
(``kept.json``, ``kept.png``) for the restarted arms by what they keep of the old network,
each paired by seed with the whole preserving transplant (``transplant``).

    python examples/rules_table.py [--results results] [--headline | --continuation
                                    | --ablation cartpole_add_units | --aggregates
                                    | --falls cartpole_add_observations
                                    | --starts lunarlander_add_actions
                                    | --kept lunarlander_add_actions]
"""

import argparse
import json
from pathlib import Path

from experiments import results

# What each new-phase arm keeps of the old run beyond the transplanted networks and Adam state
# (experiments.dqn.NEW_ARMS), for the ablation table.
KEEPS = {
    "control": "everything, no surgery (the old network)",
    "continue": "buffer (moved) and counters (epsilon at its end value)",
    "continue_buffer": "buffer (moved); counters restart (epsilon 1 -> 0.05)",
    "continue_explore": "counters (epsilon at its end value); buffer empty",
    "continue_seed": "as continue, with the seeds' rules",
    "transplant": "nothing (restart: buffer empty, epsilon 1 -> 0.05)",
    "transplant_seed": "nothing, with the seeds' rules",
    "scratch": "nothing, fresh network",
}

# How each continued arm starts its new actions (the rest of the run is the same: the old
# network's rows, its buffer moved and its counters kept), for the starts table; scratch beside.
STARTS = {
    "continue": "the mean of the old actions' rows, a margin below (preserving)",
    "continue_copy": "a copy of one old action's row, a margin below",
    "continue_seed": "fresh rows (the seeds' rule)",
    "scratch": "(a fresh network, epsilon from 1)",
}
STARTS_BASE = "continue"

# What each restarted arm keeps of the old network (the rest as in scratch; every one starts
# with an empty buffer and epsilon from 1), for the kept table.
KEPT = {
    "transplant": "all of it and Adam's state; new actions' rows the mean, a margin below",
    "transplant_seed": "all of it and Adam's state; new actions' rows fresh (the seeds' rules)",
    "transplant_features": "the hidden layers only; output layer and Adam's state fresh",
    "scratch": "nothing (a fresh network)",
}
KEPT_BASE = "transplant"

# A seed "falls back" when, within this many steps of first reaching the threshold, an
# evaluation returns less than this (CartPole: well under the 475 it had reached).
FALL_WINDOW = 100_000
FALL_FLOOR = 300


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--headline", action="store_true",
                       help="the short table: preserving transplant against scratch only")
    which.add_argument("--continuation", action="store_true",
                       help="the dip after the transplant, continue against control")
    which.add_argument("--ablation", metavar="NAME",
                       help="one experiment's arms with what each keeps of the old run")
    which.add_argument("--falls", metavar="NAME",
                       help="one experiment's seeds that fall back after reaching its threshold")
    which.add_argument("--starts", metavar="NAME",
                       help="one experiment's new-action rules under the continuation, against "
                            "the preserving one; writes starts.json and starts.png")
    which.add_argument("--kept", metavar="NAME",
                       help="one experiment's restarted arms by what they keep of the old "
                            "network, against the whole transplant; writes kept.json and kept.png")
    which.add_argument("--aggregates", action="store_true",
                       help="IQM and P(arm > scratch) with bootstrap intervals, continued runs")
    args = parser.parse_args(argv)
    if args.ablation:
        summary = json.loads((args.results / args.ablation / "summary.json").read_text())
        table = results.arms_table(summary, KEEPS)
        print(table)
        return table
    if args.starts:
        return versus(args.results / args.starts, "starts", STARTS, STARTS_BASE,
                      column="new actions start as", title="how new actions start")
    if args.kept:
        return versus(args.results / args.kept, "kept", KEPT, KEPT_BASE,
                      column="keeps of the old network", title="what the restart keeps")
    if args.falls:
        summary = json.loads((args.results / args.falls / "summary.json").read_text())
        table = results.falls_table(summary, floor=FALL_FLOOR, window=FALL_WINDOW)
        print(table)
        return table
    paths = sorted(args.results.glob("*/summary.json"))
    if not paths:
        parser.error(f"no */summary.json under {args.results}")
    # The DQN and digits transplant experiments, each from the folder named after it (the
    # demo's run and earlier runs kept beside it are not rows): the defaults' scratch-only runs
    # have no old agent, and PPO's and the transformer's summaries have arms of their own
    # (docs/ppo.md, docs/transformer.md tabulate them). A run may lack some arms (one trained in
    # parts): its rows are the arms it has.
    loaded = [(path, json.loads(path.read_text())) for path in paths]
    summaries = [s for path, s in loaded if path.parent.name == s.get("experiment")
                 and {"old", "scratch"} <= set(s.get("arms", {}))
                 and s.get("learner", "dqn") != "ppo"]
    if args.continuation:
        table = results.continuation_table(summaries)
    elif args.aggregates:
        table = results.aggregates_table([s for s in summaries if "continue" in s["arms"]],
                                         arms=("transplant", "continue", "scratch"))
    else:
        table = (results.headline_table if args.headline else results.rules_table)(summaries)
    print(table)
    return table


def versus(folder: Path, name: str, labels: dict[str, str], base: str, column: str,
           title: str) -> str:
    """The arms `labels` names of the run in `folder`, each paired by seed with `base`; writes
    the table's figures to ``{name}.json`` and the arms' curves, the old agents' before them,
    to ``{name}.png``."""
    if not (folder / "summary.json").is_file():
        raise SystemExit(f"no {folder / 'summary.json'}: name an experiment's folder under"
                         " --results")
    summary = json.loads((folder / "summary.json").read_text())
    missing = [arm for arm in (base, "old") if arm not in summary["arms"]]
    if missing:
        raise SystemExit(f"{folder / 'summary.json'} has no arm {', '.join(missing)}: the arms "
                         f"are compared with {base!r}, after the old agents")
    pairs = results.versus(summary, base, tuple(labels))
    table = results.versus_table(summary, labels, base, pairs, column=column)
    (folder / f"{name}.json").write_text(json.dumps(
        {"experiment": summary["experiment"], "source": "summary.json",
         "command": f"python examples/rules_table.py --{name} {folder.name}",
         "base": base, name: {a: labels[a] for a in labels if a in summary["arms"]},
         "versus_base": pairs}, indent=2) + "\n")
    shown = {**summary, "arms": {arm: a for arm, a in summary["arms"].items()
                                 if arm == "old" or arm in labels}}
    results.plot(shown, folder / f"{name}.png", xlabel="environment steps (0 = transplant)",
                 ylabel="greedy evaluation return", title=f"{summary['experiment']}: {title}")
    print(table)
    return table


if __name__ == "__main__":
    main()
