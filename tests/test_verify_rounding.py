"""examples/verify_rounding.py, the figures docs/errors.md quotes: a short run of it writes a
summary whose width changes are claimed to keep the function and stay within fs.ROUNDING."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import flaxsurgery as fs

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "verify_rounding.py"


def load_script():
    spec = importlib.util.spec_from_file_location("verify_rounding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_run_writes_what_the_docs_quote(tmp_path):
    summary = load_script().main(["--seeds", "1", "--samples", "256", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "verify_rounding" / "summary.json").read_text()) == summary
    assert set(summary["dtypes"]) == {"float32", "float16", "bfloat16"}
    for dtype, row in summary["dtypes"].items():
        assert row["claims"] == ["function"], dtype
        assert row["rounding"] == fs.ROUNDING[dtype]
        assert row["max_rel_diff"] <= row["rounding"], (dtype, row)
        assert row["max_abs_q"] > 100  # the head was scaled: rounding at a trained agent's magnitude
        assert row["min_greedy_agreement"] == 1.0
