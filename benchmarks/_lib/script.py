"""What the benchmark scripts share around their flags."""

from __future__ import annotations

import sys
from typing import NoReturn

__all__ = ["usage_error"]


def usage_error(prog: str, message: str) -> NoReturn:
    """A bad flag found after parsing: one line, ``prog: error: message``, and status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
