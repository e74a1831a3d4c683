"""The notebooks: committed clean, open with a Colab badge and an install cell, and
run top to bottom at smoke size (``DSGD_NOTEBOOK_SMOKE=1``) with their figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The figures each notebook must show: PNG outputs of its executed cells.
FIGURES = {"quickstart.ipynb": 3, "bert_finetuning.ipynb": 3, "vit_imbalanced.ipynb": 4}


def _repository() -> str:
    match = re.search(r'^Repository = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml's [project.urls] names no Repository"
    return match.group(1)


def test_every_notebook_is_listed_here_and_on_the_docs_page():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(FIGURES)
    page = (ROOT / "docs" / "notebooks.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", page, re.S).group(1).split()
    for name in FIGURES:
        assert f"`{name}`" in page, f"docs/notebooks.md does not describe {name}"
        assert f"notebooks/{name.removesuffix('.ipynb')}" in toctree, f"no page renders {name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_open_with_a_colab_badge_and_an_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    repository = _repository()
    owner_repo = repository.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name}"
    assert nb.cells[0].cell_type == "markdown" and badge in nb.cells[0].source
    install = nb.cells[1]
    assert install.cell_type == "code"
    assert f'REPOSITORY = "{repository}"' in install.source
    assert 'os.environ.get("DSGD_NOTEBOOK_SMOKE") == "1"' in install.source
    # The data packages the notebook needs are pinned as the README pins them.
    readme = (ROOT / "README.md").read_text()
    for pin in re.findall(r'"([\w.-]+==[\w.]+)"', install.source):
        assert pin in readme, f"{path.name} pins {pin}, which the README does not name"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_smoke_size_and_shows_its_figures(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DSGD_NOTEBOOK_SMOKE", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    images = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == FIGURES[path.name], f"{path.name} showed {len(images)} figures"
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
