"""The `flaxsurgery` command end to end, run as a subprocess on a small orbax checkpoint."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
import pytest

from tests import cli_models

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND = shutil.which("flaxsurgery", path=os.path.dirname(sys.executable)) or "flaxsurgery"
INPUTS = ["cart_x", "cart_v", "theta", "theta_v", "bias"]
SPEC = {"spaces": {"obs": [INPUTS, INPUTS[:2] + ["wind"] + INPUTS[2:]], "out": [3, 4]},
        "rules": {"Dense_0": "fresh_in_zero_out", "out": {"mean": {"offset": -0.001}}}}


def run(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([COMMAND, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "old"
    apply, init, _ = cli_models.small()
    variables = init(jax.random.key(3))
    ocp.save(path, variables)
    return path, apply, variables


def test_inspect_lists_leaves_and_spaces(old):
    path, _, _ = old
    plain = run("inspect", str(path))
    assert plain.returncode == 0, plain.stderr
    assert "params/Dense_0/kernel" in plain.stdout and "(5, 16)" in plain.stdout and "float32" in plain.stdout
    traced = run("inspect", str(path), "--model", "tests.cli_models:small")
    assert traced.returncode == 0, traced.stderr
    assert "spaces: " in traced.stdout and "obs (5)" in traced.stdout and "out (3)" in traced.stdout


def test_plan_and_apply(old, tmp_path):
    path, apply, variables = old
    spec = tmp_path / "spec.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(SPEC))
    models = ["--old", "tests.cli_models:small", "--new", "tests.cli_models:grown", "--spec", str(spec)]
    shown = run("plan", str(path), *models)
    assert shown.returncode == 0, shown.stderr
    assert "overall: preserves greedy" in shown.stdout and "fresh_in_zero_out" in shown.stdout

    out = tmp_path / "new"
    applied = run("apply", str(path), str(out), *models, "--group-mb", "0.001")
    assert applied.returncode == 0, applied.stderr
    assert "100%" in applied.stderr  # the progress bar
    new_apply, _, _ = cli_models.grown()
    new_vars = ocp.load(out)
    assert new_vars["params"]["Dense_0"]["kernel"].shape == (6, 24)
    x = jax.random.normal(jax.random.key(0), (16, 5))
    x_new = jnp.concatenate([x[:, :2], jnp.full((16, 1), 7.0), x[:, 2:]], axis=1)  # the new "wind" input
    old_q, new_q = apply(variables, x), new_apply(new_vars, x_new)
    np.testing.assert_allclose(new_q[:, :3], old_q, atol=1e-5)  # the old outputs, unchanged
    np.testing.assert_array_equal(jnp.argmax(new_q, axis=1), jnp.argmax(old_q, axis=1))  # greedy kept


def test_errors_exit_nonzero_with_every_problem(old, tmp_path):
    path, _, _ = old
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spaces": {"obs": [5]}, "rules": {"out": "sideways"}}))
    models = ["--old", "tests.cli_models:small", "--new", "tests.cli_models:grown", "--spec", str(bad)]
    result = run("plan", str(path), *models)
    assert result.returncode == 1
    assert "space 'obs' must be" in result.stderr and "unknown rule 'sideways'" in result.stderr

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"spaces": {"inputs": [5, 6]}}))
    result = run("apply", str(path), str(tmp_path / "never"), *models[:4], "--spec", str(unknown))
    assert result.returncode == 1 and "unknown space 'inputs'" in result.stderr
    assert not (tmp_path / "never").exists()


def test_relative_paths(old, tmp_path):
    path, _, _ = old
    shutil.copytree(path, tmp_path / "old")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    models = ["--old", "tests.cli_models:small", "--new", "tests.cli_models:grown", "--spec", "spec.json"]
    applied = run("apply", "old", "new", *models, "--quiet", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert ocp.load(tmp_path / "new")["params"]["Dense_0"]["kernel"].shape == (6, 24)
    assert run("inspect", "new", cwd=tmp_path).returncode == 0


def test_one_clear_line_for_a_broken_spec_or_a_checkpoint_of_another_model(old, tmp_path):
    path, _, _ = old
    broken = tmp_path / "broken.yaml"
    broken.write_text("spaces:\n  obs: [[a, b], [a, b, c]\n  out: [3, 4]\n")  # an unclosed bracket
    models = ["--old", "tests.cli_models:small", "--new", "tests.cli_models:grown"]
    result = run("plan", str(path), *models, "--spec", str(broken))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"spec '{broken}' is not valid YAML" in result.stderr and "line 3" in result.stderr
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"spaces": {"obs": [5, 6]')
    result = run("plan", str(path), *models, "--spec", str(broken_json))
    assert result.returncode == 1 and f"spec '{broken_json}' is not valid JSON" in result.stderr

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    # the grown model's checkpoint given as the old one: its leaves do not fit --old
    result = run("plan", str(path), "--old", "tests.cli_models:grown", "--new", "tests.cli_models:grown",
                 "--spec", str(spec))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"checkpoint '{path}' does not fit the model --old tests.cli_models:grown" in result.stderr
    assert "leaf 'params/Dense_0/kernel' is (5, 16) in the checkpoint, the model makes (6, 24)" \
        in result.stderr
    result = run("inspect", str(path), "--model", "tests.cli_models:grown")
    assert result.returncode == 1 and "does not fit the model tests.cli_models:grown" in result.stderr
