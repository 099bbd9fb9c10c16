"""Lines per module and the longest functions of a package: the figures docs/design.md quotes.

    python tools/code_stats.py flaxsurgery [--top 10] [--json]

Lines are the file's lines (docstrings and comments included: a reader reads them too); a
function's length runs from its ``def`` to its last line, and its code lines are those less its
docstring. The longest functions are ranked by code lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib


def module_lines(package: pathlib.Path) -> dict[str, int]:
    """``{module path: lines}`` for every ``.py`` file under `package`."""
    return {str(path): len(path.read_text().splitlines()) for path in sorted(package.rglob("*.py"))}


def function_lengths(package: pathlib.Path) -> list[tuple[int, int, str]]:
    """``(code lines, lines, "module:function")`` for every function and method under
    `package`, longest code first."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                first = node.body[0]
                is_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str)
                doc = first.end_lineno - first.lineno + 1 if is_doc else 0
                found.append((lines - doc, lines, f"{path}:{node.name}"))
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
                          "longest_functions": [{"name": n, "code_lines": c, "lines": k}
                                                for c, k, n in longest]}, indent=1))
        return
    for path, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"{count:6d}  {path}")
    print(f"{sum(lines.values()):6d}  total, {len(lines)} modules")
    print("longest functions (code lines, lines with the docstring):")
    for code, count, name in longest:
        print(f"{code:6d} {count:6d}  {name}")


if __name__ == "__main__":
    main()
