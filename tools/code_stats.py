"""Lines per module and the longest functions of a package: the figures docs/design.md quotes.

    python tools/code_stats.py flaxsurgery [--top 10] [--json]

Lines are the file's lines (docstrings and comments included: a reader reads them too); a
function's length runs from its ``def`` to its last line.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib


def module_lines(package: pathlib.Path) -> dict[str, int]:
    """``{module path: lines}`` for every ``.py`` file under `package`."""
    return {str(path): len(path.read_text().splitlines()) for path in sorted(package.rglob("*.py"))}


def function_lengths(package: pathlib.Path) -> list[tuple[int, str]]:
    """``(lines, "module:function")`` for every function and method under `package`."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path}:{node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=pathlib.Path)
    parser.add_argument("--top", type=int, default=10, help="how many of the longest functions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    lines = module_lines(args.package)
    longest = function_lengths(args.package)[: args.top]
    if args.json:
        print(json.dumps({"modules": lines, "total": sum(lines.values()),
                          "longest_functions": [{"name": n, "lines": k} for k, n in longest]}, indent=1))
        return
    for path, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"{count:6d}  {path}")
    print(f"{sum(lines.values()):6d}  total, {len(lines)} modules")
    print("longest functions:")
    for count, name in longest:
        print(f"{count:6d}  {name}")


if __name__ == "__main__":
    main()
