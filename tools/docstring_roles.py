"""Finds (and with --fix, rewrites) Sphinx roles in the library's docstrings.

The API reference (mkdocstrings) renders Markdown: a Sphinx role such as :func:`plan` shows as
raw text. The one style: a cross-reference mkdocstrings resolves, [`plan`][flaxsurgery.plan],
for an object the API reference shows; a code span, `claims`, for anything else.

Usage:
    python tools/docstring_roles.py          # lists raw roles; exit status 1 if any
    python tools/docstring_roles.py --fix    # rewrites them in place (run from the repository root)
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flaxsurgery"
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(?P<target>~?[\w.]+)(?:\(\))?`")
# The modules whose public names the API reference shows (docs/api.md), and under which path.
SHOWN_MODULES = ("flaxsurgery", "flaxsurgery.rl", "flaxsurgery.checkpoint", "flaxsurgery.sharding")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def shown_objects() -> dict[int, str]:
    """id of each object the API reference shows -> the identifier it is shown under."""
    sys.path.insert(0, str(ROOT))
    shown: dict[int, str] = {}
    for name in SHOWN_MODULES:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == name and callable(v)]
        for attr in public:
            value = getattr(module, attr)
            shown.setdefault(id(value), f"{name}.{attr}")
            if inspect.isclass(value):  # methods, as Class.method
                for member, sub in vars(value).items():
                    if not member.startswith("_") and callable(sub):
                        shown.setdefault(id(sub), f"{name}.{attr}.{member}")
    for name in ("transplant", "verify"):  # shown under their modules' names (docs/api.md)
        shown[id(getattr(importlib.import_module("flaxsurgery"), name))] = f"flaxsurgery.{name}.{name}"
    return shown


def resolve(target: str, context: str) -> object | None:
    """The object `target` names, tried as written, under flaxsurgery, and under `context`."""
    for candidate in (target, f"flaxsurgery.{target}", f"{context}.{target}"):
        parts = candidate.split(".")
        for split in range(1, len(parts) + 1):  # attributes first: fs.transplant is the function
            try:
                value = importlib.import_module(".".join(parts[:split]))
                for attr in parts[split:]:
                    value = getattr(value, attr)
            except (ImportError, AttributeError):
                continue
            return value
    return None


def replacement(match: re.Match, context: str, shown: dict[int, str]) -> str:
    target = match["target"]
    text = target.lstrip("~").rsplit(".", 1)[-1] if target.startswith("~") else target
    value = resolve(target.lstrip("~"), context)
    identifier = shown.get(id(value)) if value is not None else None
    return f"[`{text}`][{identifier}]" if identifier else f"`{text}`"


def main() -> int:
    fix = "--fix" in sys.argv[1:]
    shown = shown_objects() if fix else {}
    found = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        hits = list(ROLE.finditer(text))
        found += len(hits)
        for m in hits:
            line = text[:m.start()].count("\n") + 1
            print(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
        if fix and hits:
            context = module_name(path)
            path.write_text(ROLE.sub(lambda m, c=context: replacement(m, c, shown), text))
    if found and not fix:
        print(f"{found} Sphinx roles in docstrings: the API reference shows them as raw text; "
              f"python tools/docstring_roles.py --fix rewrites them")
    return 1 if found and not fix else 0


if __name__ == "__main__":
    sys.exit(main())
