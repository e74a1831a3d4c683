"""benchmarks/instability_pilot.py on the tiny BERT: settings, table, resume, errors."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from _helpers import load_benchmark

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pilot():
    return load_benchmark("instability_pilot")


def test_settings_are_named_by_their_factors(pilot):
    fail = pilot.setting("tweets2", 3e-4, "fail", "ep10")
    assert fail["name"] == "tweets2-fail+ep10-lr3e-4"
    assert fail["factors"] == ["nobc", "warm0", "b5x2", "noclip", "ep10"]
    for flag in ("--optimizer=bertadam", "--warmup_ratio=0", "--batch_size=5",
                 "--grad_accum_steps=2", "--max_grad_norm=0", "--num_epochs=10",
                 "--learning_rate=3e-4", "--task=tweets2"):  # fmt: skip
        assert flag in fail["flags"]
    assert pilot.setting("drugs", 1e-4)["name"] == "drugs-stable-lr1e-4"
    assert pilot.setting("drugs", 1e-4, "nobc")["name"] == "drugs-nobc-lr1e-4"
    with pytest.raises(ValueError, match="unknown factor 'adam'"):
        pilot.setting("drugs", 1e-4, "adam")
    names = [s["name"] for s in pilot.SETTINGS]
    assert len(names) == len(set(names)) <= 40


def test_pilot_runs_reports_and_resumes(pilot, tmp_path, monkeypatch, capsys):
    tiny = {
        "name": "tiny-nobc",
        "task": "tiny",
        "factors": ["nobc"],
        "flags": [
            "--example=bert",
            "--model=tiny",
            "--task=synthetic",
            "--num_epochs=1",
            "--learning_rate=1e-3",
            "--optimizer=bertadam",
        ],
    }
    monkeypatch.chdir(tmp_path)  # the protocol's workdirs go under runs/
    out = tmp_path / "pilot"
    assert pilot.main([f"--out={out}", "--no-progress"], settings=[tiny]) == 0
    results = json.loads((out / "tiny-nobc" / "results.json").read_text())
    assert sorted(r["seed"] for r in results["runs"]) == [42, 52, 62]
    assert "--optimizer=bertadam" in results["command"]
    (row,) = json.loads((out / "pilot.json").read_text())
    # The counts against a plain recomputation from the saved predictions.
    labels = np.array(results["test_labels"])
    majority = np.bincount(labels).max()
    correct = [int(np.sum(np.array(r["predictions"]) == labels)) for r in results["runs"]]
    assert row["failed"] == sum(c <= majority for c in correct)
    assert row["collapsed"] == sum(len(set(r["predictions"])) == 1 for r in results["runs"])
    assert row["bimodal"] == (0 < row["failed"] < 3)
    assert row["std"] == pytest.approx(np.std([r["accuracy"] for r in results["runs"]]))
    table = (out / "table.md").read_text()
    assert (
        f"| tiny-nobc | Adam without bias correction (BERTAdam) | 1e-3 | {row['failed']}/3 |"
        in table
    )
    assert (out / "pilot.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    # Started again: nothing retrains.
    from dsgd_jax.examples import stability

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished seed")

    monkeypatch.setattr(stability, "train_and_evaluate", refuse)
    monkeypatch.setattr("dsgd_jax.examples.seeds.train_seeds", refuse)
    assert pilot.main([f"--out={out}", "--no-progress"], settings=[tiny]) == 0
    assert pilot.main([f"--out={out}", "--only=nope"], settings=[tiny]) == 2
    assert capsys.readouterr().err == (
        "python benchmarks/instability_pilot.py: error: unknown --only setting(s) ['nope']; "
        "see --list.\n"
    )
    assert pilot.main([f"--out={out}", "--list", "--only=tiny-nobc"], settings=[tiny]) == 0
    assert capsys.readouterr().out.startswith("tiny-nobc ")
    with pytest.raises(SystemExit) as e:
        pilot.main(["--lists"], settings=[tiny])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unrecognized --lists" in err, err
