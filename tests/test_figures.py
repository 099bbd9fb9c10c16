"""Every figure in README.md and docs/*.md is in a committed results file.

A figure is a number written with a decimal point, a thousands separator or an exponent
(0.205, 1,130, 3.1e-5), outside code (fenced blocks and `inline code` are code, checked by
tests/test_docs.py). It must equal, to the digits shown, a number in results/**/*.json or
bench/results.json, read with its unit (GB, MB, k, M, %) and sign. Numbers that are not
results (versions, sizes and settings chosen before a run, figures derived from results) are
listed in ALLOWED, each with why; a single digit with an exponent (1e-6) is a bound or a
setting. UNBACKED lists the measured figures that no results file holds yet, each with the
command that printed it: a debt to pay, kept from growing.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA = [*sorted((ROOT / "results").rglob("*.json")), ROOT / "bench" / "results.json"]

NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+−]?)(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+(?:e[-+−]?\d+)?|\d+e[-+−]?\d+)"
    r"(?P<unit>\s?(?:GB|MB|kB|k|M|%))?(?![\w.]*\d)")
SCALE = {"GB": 1e9, "MB": 1e6, "kB": 1e3, "k": 1e3, "M": 1e6, "%": 1e-2}
LONGEST_LIST = 40  # longer lists are curves and per-seed data, where any figure would match

# A single digit and an exponent (1e-6, 2e-9, 3e-3) is a bound a test asserts or a setting.
BOUND = re.compile(r"^\de[-+−]?\d+$")

# (page, figure as written): why it is not a result.
ALLOWED: dict[tuple[str, str], str] = {
    ("docs/performance.md", "2.13"): "torch's version",
    ("docs/performance.md", "4,096"): "the benchmark's layer width, chosen",
    ("docs/performance.md", "4,224"): "the benchmark's grown layer width, chosen",
    ("docs/performance.md", "7.7"): "1 / 0.131, population_transplant's ratio inverted",
    ("docs/performance.md", "1,876"): "experiment_wall's five values and baselines, summed",
    ("docs/experiments.md", "1,876"): "experiment_wall's five values and baselines, summed",
    ("docs/rules.md", "65,536"): "2**16, bfloat16's precision against float32's",
    ("docs/scale.md", "0.25"): "a target, set before the run",
    ("docs/digits.md", "1,797"): "the size of scikit-learn's digits data set",
    ("docs/minatar.md", "1,600"): "the flattened size of a 10x10x16 feature map",
    ("docs/agents_sbx.md", "1,500"): "the old DQN's training steps, set in the test",
    ("docs/agents_sbx.md", "1,536"): "the old PPO's training steps, set in the test",
    ("docs/agents_sbx.md", "1,537"): "the old PPO's normaliser count: its 1,536 steps plus one",
    # Printed by examples/digits_classes.py, not in its summary.json: an UNBACKED debt that a
    # LunarLander figure now matches by chance, so the unbacked list cannot hold it.
    ("docs/digits.md", "0.34"): "digits_classes.py's printed accuracy at step 5 (unbacked)",
    # The same for a printed PPO figure that a LunarLander return now matches by chance.
    ("docs/ppo.md", "-151.1"): "a PPO experiment's printed figure (unbacked, as the PPO list below)",
}

# (page, figure as written): measured, printed by the command named, but not yet written to a
# results file. A debt, listed so that no new figure joins it unnoticed; each entry's command
# should write a results file, and the entry then goes.
UNBACKED: dict[tuple[str, str], str] = {
    **{("README.md", f): "tests/test_transformer.py's per-operation differences" for f in ("3.1e-5",)},
    **{("docs/summary.md", f): "tests/test_transformer.py's per-operation differences" for f in ("3.1e-5",)},
    **{("docs/transformer.md", f): "pytest -s tests/test_transformer.py; python -m experiments.transformer --lr-sweep"
       for f in ("0.21", "0.961", "1.430", "1.438", "1.496", "1.498", "1.514", "1.535", "2.1e-01", "2.4e-14",
                 "2.69e-05", "2.8e-14", "3.05e-05", "3.6e-11", "4.0e-12", "4.5e-11", "5.5e-10", "6.6e-7",
                 "9.09", "9.09e+00", "9.30e-06", "9.3e-6")},
    **{("docs/agents_sbx.md", f): "pytest -rP tests/integrations/test_sbx.py"
       for f in ("0.67", "0.73", "1.0e-09", "2.4e-07")},
    ("docs/agents_recipes.md", "1.0e-9"): "pytest -s tests/integrations/test_jax_recipes.py",
    **{("docs/digits.md", f): "python examples/digits_classes.py (printed, not in its summary.json)"
       for f in ("0.51", "0.57", "0.65", "0.73", "0.88", "0.979", "0.988")},
    **{("docs/minatar.md", f): "python examples/minatar_add_channel.py and its budget runs (printed)"
       for f in ("1.8e-7", "2.4e-6", "3.80", "4.45", "78.7%")},
    **{("docs/experiments.md", f): "per-seed returns, checks and bench runs the page quotes"
       for f in ("-175.6", "0.453", "1.35", "34,298", "99.6%", "99.8%")},
    **{("docs/ppo.md", f): "the PPO experiments' per-seed norms and the old arm's figures (printed)"
       for f in ("+0.57", "-140.3", "-146.7", "-161.9", "-166.7", "-168.9", "-212.3",
                 "-82.0", "0.28", "0.59", "2.42", "215,040", "287.5",
                 "344.7", "452.8", "473.6", "516.7")},
}


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code spans."""
    text = re.sub(r"^([ \t]*)```.*?^\1```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def figures(page: Path) -> list[tuple[str, float, float]]:
    """Each figure as written, its value in data units, and half a unit of its last digit."""
    found = []
    for m in NUMBER.finditer(prose(page.read_text())):
        digits = m["digits"].replace(",", "").replace("−", "-")
        mantissa = digits.split("e")[0]
        # The last digit shown is the precision; an integer's trailing zeros are rounding
        # ("about 33,800" for 33,792).
        if "." in mantissa:
            last = -len(mantissa.split(".")[1])
        else:
            last = len(mantissa) - len(mantissa.rstrip("0")) if mantissa.strip("0") else 0
        exponent = int(digits.split("e")[1]) if "e" in digits else 0
        scale = SCALE.get((m["unit"] or "").strip(), 1.0)
        sign = -1.0 if m["sign"] in ("-", "−") else 1.0
        found.append((m.group(0).strip(), sign * float(digits) * scale,
                      0.5 * 10.0 ** (exponent + last) * scale))
    return found


def numbers(tree, out: list[float], skip: tuple[str, ...] = ()) -> list[float]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in skip:
                numbers(value, out, skip)
    elif isinstance(tree, list):
        if len(tree) <= LONGEST_LIST and not any(isinstance(x, list) for x in tree):
            for value in tree:
                numbers(value, out, skip)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        out.append(float(tree))
    elif isinstance(tree, str):  # parameters recorded as text, "(16, 16)"
        out.extend(float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", tree))
    return out


def data_values(skip: tuple[str, ...] = (), files: list = DATA) -> list[float]:
    values: list[float] = []
    for path in files:
        numbers(json.loads(path.read_text()), values, skip)
    return sorted(set(values))


VALUES = data_values()
# The summaries' rliable-style aggregates (probabilities of improvement and bootstrap bounds,
# also in the starts and kept tables' files) cover [0, 1] densely, every bench run moves its
# ratios, and every run records the machine's load averages: an unbacked figure would match one of them by chance, so the check that a debt
# has been paid reads the experiments' results without them (no unbacked figure is one of them).
SPARSE_VALUES = data_values(skip=("aggregates", "probability_of_improvement", "load_average"),
                            files=DATA[:-1])


def matches(value: float, half_ulp: float, values: list[float] = VALUES) -> bool:
    """Some data value rounds to the figure (either sign: a difference may be stated both ways)."""
    return any(abs(abs(v) - abs(value)) <= half_ulp * 1.0001 for v in values)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_is_in_a_results_file(page):
    name = str(page.relative_to(ROOT))
    missing = sorted({shown for shown, value, half in figures(page)
                      if (name, shown) not in ALLOWED | UNBACKED and not BOUND.match(shown)
                      and not matches(value, half)})
    assert not missing, (f"{name}: figures in no results file (add the run's row to results/ or "
                         f"bench/results.json, or list them in ALLOWED with why): {missing}")


def test_listed_figures_are_still_on_their_pages_and_still_unbacked():
    shown = {page: {f[0]: f for f in figures(ROOT / page)} for page in {key[0] for key in ALLOWED | UNBACKED}}
    stale = [key for key in ALLOWED | UNBACKED if key[1] not in shown[key[0]]]
    assert not stale, f"ALLOWED or UNBACKED lists figures no page shows any more: {stale}"
    backed = [key for key in UNBACKED if matches(*shown[key[0]][key[1]][1:], SPARSE_VALUES)]
    assert not backed, f"UNBACKED lists figures a results file now holds: {backed}"


def test_the_check_reads_figures_as_written(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("took 7,654.3219 s, about 33,800 steps (`0.123` is code), 0.88 GB, 1e-6\n"
                    "```\n9.87654\n```\n")
    found = {shown: (value, half) for shown, value, half in figures(page)}
    assert set(found) == {"7,654.3219", "33,800", "0.88 GB", "1e-6"}
    assert found["33,800"] == (33800.0, 50.0) and found["0.88 GB"] == (0.88e9, 0.005e9)
    assert not matches(*found["7,654.3219"])  # a figure no results file holds is caught
    assert matches(-33792.0, 50.0)  # ppo_acrobot_add_action's steps to -100, mean - scratch
