"""tests/integrations/ needs torch and client libraries (SBX) that the core does not depend on:
it runs only when named on the command line (`make test-integrations`), never in `make test`."""

from __future__ import annotations

from pathlib import Path

INTEGRATIONS = Path(__file__).parent / "integrations"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if collection_path != INTEGRATIONS:
        return None
    root = config.invocation_params.dir
    named = ((root / arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(p == INTEGRATIONS or INTEGRATIONS in p.parents for p in named) else True
