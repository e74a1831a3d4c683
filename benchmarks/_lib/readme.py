"""Generated README sections: ``<!-- marker -->`` ... ``<!-- /marker -->`` blocks."""

from __future__ import annotations

from pathlib import Path

__all__ = ["fill_block", "tags"]


def tags(marker: str) -> tuple[str, str]:
    """The opening and closing comment of ``marker``'s block."""
    return f"<!-- {marker} -->", f"<!-- /{marker} -->"


def fill_block(readme_path: Path, marker: str, section: str) -> None:
    """Replaces ``marker``'s block (both tags included) in ``readme_path`` by ``section``."""
    start_tag, end_tag = tags(marker)
    readme = readme_path.read_text()
    if start_tag not in readme or end_tag not in readme:
        raise ValueError(f"{readme_path.name} has no {start_tag} ... {end_tag} block to fill.")
    start = readme.index(start_tag)
    end = readme.index(end_tag) + len(end_tag)
    readme_path.write_text(readme[:start] + section + readme[end:])
