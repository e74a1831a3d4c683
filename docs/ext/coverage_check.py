"""Fails the docs build when a public name of ``dsgd_jax`` has no page.

optax's ``docs/ext/coverage_check.py`` does this as a separate builder; here it runs in
every build, as a warning, which ``sphinx -W`` turns into an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sphinx.util import logging

import dsgd_jax

logger = logging.getLogger(__name__)


def public_names() -> set[str]:
    """Every name the package exports, fully qualified."""
    return {f"dsgd_jax.{name}" for name in dsgd_jax.__all__}


def undocumented(documented: Iterable[str], public: Iterable[str] | None = None) -> list[str]:
    """The public names that no page documents, sorted."""
    return sorted(set(public_names() if public is None else public) - set(documented))


def _check(app, env) -> None:
    missing = undocumented(env.domaindata["py"]["objects"])
    if missing:
        logger.warning(
            "public names without a page: %s; add them to docs/api.md", ", ".join(missing)
        )


def setup(app) -> dict[str, Any]:
    app.connect("env-check-consistency", _check)
    return {"version": dsgd_jax.__version__, "parallel_read_safe": True}
