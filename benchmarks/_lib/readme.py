"""Generated blocks of the README and the documentation pages: ``<!-- marker -->`` ...
``<!-- /marker -->``, each rewritten whole by the script that owns it.

The generators write links relative to the repository root (``benchmarks/results/...``);
:func:`fill_block` rebases them onto the page they go into, so the same block works in
``README.md`` and in ``docs/results/stability.md``, on GitHub and in the Sphinx build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["PAGES", "ROOT", "current", "fill_block", "rebase", "tags"]

ROOT = Path(__file__).resolve().parents[2]

# Where each generated block lives, relative to the repository root.
PAGES = {
    "readme:main-job-results": "README.md",
    "readme:results-summary": "README.md",
    "docs:vit-results": "docs/guides/examples.md",
    "docs:stability-results": "docs/results/stability.md",
    "docs:pilot": "docs/results/stability.md",
    "docs:multitask-results": "docs/results/stability.md",
    "docs:performance-results": "docs/results/performance.md",
    "docs:mechanism": "docs/method.md",
}


def tags(marker: str) -> tuple[str, str]:
    """The opening and closing comment of ``marker``'s block."""
    return f"<!-- {marker} -->", f"<!-- /{marker} -->"


def rebase(section: str, page: Path, root: Path = ROOT) -> str:
    """``section`` with its repository-relative link targets made relative to ``page``."""
    prefix = Path(os.path.relpath(root, Path(page).resolve().parent)).as_posix()
    if prefix == ".":
        return section
    return re.sub(r"\]\((benchmarks|docs|notebooks)/", rf"]({prefix}/\1/", section)


def fill_block(page: Path, marker: str, section: str, root: Path = ROOT) -> None:
    """Replaces ``marker``'s block (both tags included) in ``page`` by ``section``, its
    links rebased onto the page (:func:`rebase`)."""
    start_tag, end_tag = tags(marker)
    text = page.read_text()
    if start_tag not in text or end_tag not in text:
        raise ValueError(f"{page.name} has no {start_tag} ... {end_tag} block to fill.")
    start = text.index(start_tag)
    end = text.index(end_tag) + len(end_tag)
    page.write_text(text[:start] + rebase(section, page, root) + text[end:])


def current(marker: str, section: str, root: Path = ROOT) -> bool:
    """Whether ``marker``'s page (:data:`PAGES`) holds ``section`` as :func:`fill_block`
    writes it: the check of every generated block's test."""
    page = root / PAGES[marker]
    return rebase(section, page, root) in page.read_text()
