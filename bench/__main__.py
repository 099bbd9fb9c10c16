"""Runs the benchmarks, writes bench/results.json and prints them as a table.

    python -m bench            # the full mode the README reports
    python -m bench --quick    # under 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from bench import (
    agent_bench,
    buffer_bench,
    checkpoint_bench,
    dqn_bench,
    sharding_bench,
    transplant_bench,
)

SUITES = {
    "transplant": transplant_bench.bench_transplant,
    "plan_build": transplant_bench.bench_plan_build,
    "plan_vocabulary": transplant_bench.bench_plan_vocabulary,
    "population": transplant_bench.bench_population,
    "agent_surgery": agent_bench.bench_agent_surgery,
    "dqn": dqn_bench.bench_dqn,
    "seeds_scaling": dqn_bench.bench_seeds_scaling,
    "dqn_vs_sb3": dqn_bench.bench_dqn_vs_sb3,
    "experiment_wall": dqn_bench.bench_experiment_wall,
    "checkpoint": checkpoint_bench.bench_checkpoint,
    "buffer_move": buffer_bench.bench_buffer_move,
    "dqn_flashbax": buffer_bench.bench_dqn_flashbax,
    "sharded": sharding_bench.bench_sharded,
}


def row_key(row: dict) -> tuple:
    """What a row measures: its name and its parameters that are not measured figures (floats,
    such as compile seconds), so a run at other sizes adds rows instead of replacing them."""
    params = {k: v for k, v in row["params"].items() if not isinstance(v, float)}
    return row["name"], json.dumps(params, sort_keys=True)


def table(rows: list[dict]) -> str:
    lines = ["| name | params | value | baseline | ratio | unit |", "|---|---|---|---|---|---|"]
    for r in rows:
        shown = {k: v for k, v in r["params"].items() if not k.endswith("_is")}
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        lines.append(f"| {r['name']} | {params} | {r['value']:.4g} | {r['baseline']:.4g} | "
                     f"{r['ratio']:.3g} | {r['unit']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes on 2 cores")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES),
                        help="run only these suites; the other rows in --out are kept")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("results.json")))
    args = parser.parse_args()

    rows, start = [], time.perf_counter()
    for name, suite in SUITES.items():
        if args.only and name not in args.only:
            continue
        print(f"[{time.perf_counter() - start:6.1f}s] {name} ({'quick' if args.quick else 'full'})", flush=True)
        rows += suite(args.quick)
    out = pathlib.Path(args.out)
    if args.only and out.exists():  # keep the other rows from the last run
        measured = {row_key(row) for row in rows}
        rows = [row for row in json.loads(out.read_text()) if row_key(row) not in measured] + rows
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
