"""What a user without an extra sees: an error that names the extra to install."""

from __future__ import annotations

import subprocess
import sys


def test_rl_without_gymnax_names_the_extra():
    # `sys.modules[name] = None` makes `import name` fail as a missing package does.
    code = "import sys; sys.modules['gymnax'] = None; import flaxsurgery.rl"
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: flaxsurgery.rl needs gymnax"), run.stderr
    assert 'pip install "flaxsurgery[rl]"' in last
