"""Sharded transplant on 8 host CPU devices, and across two processes with jax.distributed.

Each check runs tests/sharded_worker.py in fresh processes (the device count is fixed when JAX
starts), so the rest of the suite keeps its one CPU device.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "tests.sharded_worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def check(report: dict, meshes=("8", "2x4")) -> None:
    for mesh in meshes:
        # every device's shard equals the unsharded transplant, in the fresh tree's shardings
        assert report[f"{mesh}/max_diff"] < 1e-5
        # orbax restores straight into the shardings; the out-of-core surgery, sharded, agrees
        assert report[f"{mesh}/restore_diff"] == 0.0
        assert report[f"{mesh}/checkpoint_diff"] < 1e-5
        # no kernel is ever gathered whole; a permuted bias vector may be
        for line in report[f"{mesh}/whole_gathers"]:
            assert "," not in re.search(r"\[(.*?)\]", line).group(1), line
        # each device holds far less than the whole trees (8 devices: 1/8 is the floor)
        assert report[f"{mesh}/per_device_over_whole"] < 0.4
    # the HLO check finds the whole-kernel gather that plain jit makes on a 1-D mesh
    assert any("," in re.search(r"\[(.*?)\]", line).group(1) for line in report["8/plain_whole_gathers"])


def test_eight_devices(tmp_path):
    report = report_of(worker("local", str(tmp_path)))
    assert report["devices"] == 8
    check(report)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes(tmp_path):
    port = str(free_port())
    procs = [worker("multihost", str(tmp_path), str(i), port) for i in range(2)]
    reports = [report_of(p) for p in procs]
    assert sorted(r["process_index"] for r in reports) == [0, 1]
    for report in reports:
        assert report["devices"] == 8 and report["local_devices"] == 4
        check(report, meshes=("8",))
