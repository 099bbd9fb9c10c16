"""Every code block in README.md and docs/*.md runs as written, or says why not.

A fenced block is read by its language and its title (```` ```python title="..." ````; the
site shows the title above the block):

- a block with ``>>>`` prompts is a doctest: pytest collects every page (``--doctest-glob``);
- ``title="not run: <reason>"``: not run, and the reader sees why;
- ``title="from <path>"``: code the tests run, shown from that file (each paragraph of the
  block must occur there as a run of lines);
- ``title="<file name>"`` (``models.py``, ``spec.yaml``): written into the page's directory;
- ``python``: run, top to bottom, in one namespace per page, in a fresh directory;
- ``console``: each ``$ command`` runs in that directory (``flaxsurgery`` and ``python`` are
  this interpreter's), and its standard output must be the lines shown under it;
- ``text``: output or a listing, nothing to run.

Any other block fails `test_every_block_says_how_it_runs`, so a new example cannot go untested
by accident.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="(?P<title>[^"]*)"')
FILE_NAME = re.compile(r"^[\w.-]+\.\w+$")


class Block(NamedTuple):
    page: Path
    line: int
    lang: str
    title: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.title.startswith("not run:"):
            return "not run"
        if self.title.startswith("from "):
            return "from"
        if ">>>" in self.text:
            return "doctest"
        if FILE_NAME.match(self.title):
            return "file"
        if self.lang in ("python", "console", "text"):
            return self.lang
        return "unclassified"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        info = m["info"].strip()
        title = TITLE.search(info)
        found.append(Block(page, text[:m.start()].count("\n") + 1, info.split(" ")[0] if info else "",
                           title["title"] if title else "", textwrap.dedent(m["body"])))
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_every_block_says_how_it_runs():
    unclassified = [f"{b.where} (```{b.lang})" for b in ALL if b.kind == "unclassified"]
    assert not unclassified, (
        "code blocks that neither run nor say why (see tests/test_docs.py for the titles):\n"
        + "\n".join(unclassified))
    no_reason = [b.where for b in ALL if b.kind == "not run" and len(b.title) < len("not run: ") + 10]
    assert not no_reason, f"'not run:' with no reason: {no_reason}"


def test_every_page_is_collected_for_doctests():
    config = (ROOT / "pyproject.toml").read_text()
    testpaths = re.search(r"^testpaths = \[(.*)\]$", config, re.MULTILINE)[1]
    assert '"README.md"' in testpaths and '"docs"' in testpaths
    assert re.search(r"^addopts = .*--doctest-glob=\*\.md", config, re.MULTILINE)
    assert any(b.kind == "doctest" for b in ALL)  # the convention is in use


def stripped_lines(text: str) -> list[str]:
    """The lines without indentation, blank lines and whole-line comments (such as the tests'
    ``# --- surgery`` markers)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "from"], ids=lambda b: b.where)
def test_shown_code_is_the_tested_code(block):
    source = ROOT / block.title.removeprefix("from ").split("::")[0].strip()
    assert source.is_file(), f"{block.where}: no file {source}"
    held = stripped_lines(source.read_text())
    for paragraph in re.split(r"\n\s*\n", block.text):  # each paragraph a run of the file's lines
        shown = stripped_lines(paragraph)
        starts = [i for i, line in enumerate(held) if line == shown[0]]
        assert any(held[i:i + len(shown)] == shown for i in starts), (
            f"{block.where}: not in {source.relative_to(ROOT)} as shown:\n{paragraph}")


def run_console(block: Block, directory: Path) -> None:
    """Runs each `$ command` of a console block and compares its stdout with the lines shown."""
    commands = re.split(r"^\$ ", block.text, flags=re.MULTILINE)[1:]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    programs = {"flaxsurgery": [sys.executable, "-m", "flaxsurgery.cli"], "python": [sys.executable]}
    for command in commands:
        line, _, expected = command.partition("\n")
        argv = shlex.split(line)
        argv = programs.get(argv[0], argv[:1]) + argv[1:]
        run = subprocess.run(argv, check=False, cwd=directory, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{block.where}: $ {line}\n{run.stderr}"
        got = [x.rstrip() for x in run.stdout.strip().splitlines()]
        want = [x.rstrip() for x in expected.strip().splitlines()]
        assert got == want, f"{block.where}: $ {line}\nprinted:\n" + "\n".join(got)


def run_python(block: Block, namespace: dict) -> None:
    exec(compile(block.text, block.where, "exec"), namespace)  # noqa: S102


def checkpoint_takes_relative_paths(directory: Path) -> bool:
    """Whether flaxsurgery.checkpoint reads a checkpoint named relative to the current directory
    (orbax alone wants absolute paths); the docs are written for a library that does."""
    import numpy as np
    import orbax.checkpoint.experimental.v1 as ocp

    from flaxsurgery import checkpoint

    ocp.save(directory / "probe", {"w": np.zeros(2, np.float32)})
    try:
        shapes = checkpoint.checkpoint_shapes("probe")
    except ValueError:
        return False
    return isinstance(shapes, dict) and "w" in shapes


RUN_PAGES = sorted({b.page for b in ALL if b.kind in ("python", "console", "file")})


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if "flaxsurgery import checkpoint" in page.read_text() and not checkpoint_takes_relative_paths(tmp_path):
        pytest.xfail("flaxsurgery.checkpoint does not accept relative checkpoint paths yet")
    before = set(sys.modules)
    page_module = types.ModuleType(f"docs_page_{page.stem}")  # dataclasses look their module up
    sys.modules[page_module.__name__] = page_module
    try:
        for block in blocks(page):
            if block.kind == "file":
                (tmp_path / block.title).write_text(block.text)
            elif block.kind == "python":
                run_python(block, page_module.__dict__)
            elif block.kind == "console":
                run_console(block, tmp_path)
    finally:  # modules of the page (models.py) must not leak into the next page
        for name in set(sys.modules) - before:
            if name == page_module.__name__ or str(tmp_path) in str(getattr(sys.modules[name], "__file__", "") or ""):
                del sys.modules[name]
