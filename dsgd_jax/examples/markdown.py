"""The one writer of the markdown tables in results files, reports and the README.

>>> print(table(["method", "accuracy (%)"], [["fft", "86.75"], ["dsgd", "89.75"]], "lr"), end="")
| method | accuracy (%) |
|---|---:|
| fft | 86.75 |
| dsgd | 89.75 |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["percent", "table"]

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def percent(x: float) -> str:
    """A share as a table cell: percent with two decimals (``percent(0.8675)`` is
    ``'86.75'``)."""
    return f"{100 * x:.2f}"


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table, one line per row, ending with a newline.

    Args:
      columns: the header cells.
      rows: the rows, one cell per column (cells are written with ``str``).
      align: one letter per column, ``l`` (left), ``r`` (right) or ``c`` (centred);
        missing letters mean left.

    Raises:
      ValueError: if ``align`` has another letter or is longer than ``columns``, or a
        row has another number of cells.
    """
    columns = [str(c) for c in columns]
    if len(align) > len(columns) or set(align) - set(_RULES):
        raise ValueError(
            f"align={align!r} must be at most {len(columns)} of the letters l, r, c "
            "(one per column)."
        )
    lines = [_row(columns), "|" + "|".join(_RULES[a] for a in align.ljust(len(columns), "l")) + "|"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(columns):
            raise ValueError(f"a row has {len(cells)} cells for {len(columns)} columns: {cells}")
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
