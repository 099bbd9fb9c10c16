"""Checks that every relative link in README.md and docs/*.md points at a file that exists.

Usage: python tools/check_links.py (exit status 1 and one line per broken link otherwise).
Anchors are not checked here; `mkdocs build --strict` checks those within docs/.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(markdown_file):
    """Yields (file, target) for each relative link whose target does not exist."""
    text = re.sub(r"```.*?```", "", markdown_file.read_text(), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (markdown_file.parent / path).exists():
            yield markdown_file.relative_to(ROOT), target


def main():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [link for f in files for link in broken_links(f)]
    for source, target in broken:
        print(f"{source}: broken link {target}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
