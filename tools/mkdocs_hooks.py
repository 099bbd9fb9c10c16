"""MkDocs hooks: the site's home page is the README, and the result figures come from results/.

The Markdown files link the way GitHub shows them (docs pages to `../README.md` and
`../results/<experiment>/curves.png`, the README to `docs/<page>.md`); these hooks map those
links onto the site, so one set of files serves both.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    """Adds every results/*/*.png to the site, at results/... beside the pages."""
    for image in sorted(ROOT.glob("results/*/*.png")):
        files.append(
            File(
                image.relative_to(ROOT).as_posix(),
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown, page, config, files):
    """Puts the README on the home page and points repository-relative links at the site."""
    if page.file.src_uri == "index.md":
        markdown = (ROOT / "README.md").read_text().replace("](docs/", "](")
    return markdown.replace("](../README.md", "](index.md").replace("](../results/", "](results/")
