"""Issue 6, part 1: a CNN trained on digits 0-3 is transplanted into a 4-9 classifier.

The data are scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``, shipped
inside the package), not MNIST, which cannot be downloaded here. The two conv layers are
transplanted; the output space ``out`` goes from unit IDs 0-3 to 4-9 (all six outputs new:
``mean`` of the old four under preset "preserving", ``fresh`` under preset "seed"). Arms: old
(on 0-3), transplant, transplant_seed, scratch; test accuracy every ``--eval-every`` steps.

    python examples/digits_classes.py --seeds 20
"""

import argparse
import time
from pathlib import Path

from experiments import digits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per arm (at least 2)")
    parser.add_argument("--steps", type=int, default=digits.Config.steps,
                        help="minibatch steps per phase (a multiple of --eval-every)")
    parser.add_argument("--eval-every", type=int, default=digits.Config.eval_every,
                        help="steps between test-accuracy evaluations")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the 95%% interval needs two)")
    if args.steps % args.eval_every:
        parser.error(f"--steps {args.steps} is not a multiple of --eval-every {args.eval_every}")
    config = digits.Config(steps=args.steps, eval_every=args.eval_every)

    start = time.perf_counter()
    accuracy = digits.run(config, seeds=args.seeds)
    wall_s = time.perf_counter() - start
    summary = digits.summarise(config, accuracy, wall_s)
    path = digits.report(summary, args.out / summary["experiment"])
    print(f"\ndigits_classes ({digits.DATASET}): {args.seeds} seeds, {config.steps} steps per "
          f"phase, {wall_s:.0f}s\n\n{digits.markdown_table(summary)}\n\nplot: {path}\n"
          f"summary: {path.with_name('summary.json')}", flush=True)
    return summary


if __name__ == "__main__":
    main()
