"""Sphinx configuration of the dsgd_jax documentation (optax's stack: myst-nb, the book
theme, autodoc). Build it, warnings as errors, with the README's command::

    python -m sphinx -W --keep-going -E -b html docs docs/_build/html
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "ext")]

import dsgd_jax  # noqa: E402

project = "dsgd_jax"
author = "dsgd_jax developers"
copyright = "2026, dsgd_jax developers"
release = version = dsgd_jax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "matplotlib.sphinxext.plot_directive",
    "coverage_check",
]

# The notebooks are rendered from ../notebooks, copied here at each build; they are
# committed without outputs and executed by the test suite, not by the docs build
# (which must stay offline and within CI's time).
NOTEBOOKS = DOCS / "notebooks"
shutil.rmtree(NOTEBOOKS, ignore_errors=True)
NOTEBOOKS.mkdir()
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy(notebook, NOTEBOOKS / notebook.name)
nb_execution_mode = "off"

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "ext", "README.md"]
suppress_warnings = ["myst.header"]  # pages start below the README's top heading

autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: one description each, no duplicates

plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]

html_theme = "sphinx_book_theme"
html_title = "dsgd_jax"
html_theme_options = {
    "repository_url": "https://github.com/dsgd-jax/dsgd_jax",
    "use_repository_button": True,
    "path_to_docs": "docs",
}
# Every reference must resolve (a broken one fails the build), except the types of
# other libraries, which have no pages here (no intersphinx: the build is offline).
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(jax|jaxlib|numpy|optax|flax|nnx|collections|typing|pathlib|Path)(\..*)?"),
]
