"""The seed-stability runner end to end on the tiny BERT: files, table, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dsgd_jax.examples import stability
from dsgd_jax.examples.bert.config import BertExampleConfig

TINY = ["--model=tiny", "--task=synthetic", "--num_epochs=1", "--learning_rate=1e-3"]


def _cli(tmp_path, *argv):
    out, runs = tmp_path / "out", tmp_path / "runs"
    return stability.cli(
        ["--example=bert", f"--out={out}", f"--runs_dir={runs}", "--no-progress", *TINY, *argv]
    )


def test_runner_writes_results_table_and_plots_then_resumes(tmp_path, monkeypatch, capsys):
    status = _cli(tmp_path, "--methods=fft,dsgd", "--seeds=42,52", "--conflict_every=2", "--vmap")
    assert status == 0, capsys.readouterr().err
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["fft", "dsgd"] and results["seeds"] == [42, 52]
    assert {(r["label"], r["seed"]) for r in results["runs"]} == {
        (m, s) for m in ("fft", "dsgd") for s in (42, 52)
    }
    labels = np.array(results["test_labels"])
    for run in results["runs"]:
        # Every run's accuracy is what its saved predictions give.
        assert run["accuracy"] == pytest.approx(np.mean(np.array(run["predictions"]) == labels))
        assert run["config"]["method"] == run["label"] and run["epoch_metrics"]
        assert {"accuracy", "macro_f1", "per_class_recall", "collapsed", "wall_time_s"} <= set(run)
        # Every FFT and DSGD seed traces the conflict, with both groups' gradient norms.
        assert [t["step"] for t in run["conflict_trace"]] == list(
            range(2, 2 * len(run["conflict_trace"]) + 1, 2)
        )
        assert {"cosine", "wrong_norm", "correct_norm", "total_norm"} <= set(
            run["conflict_trace"][0]
        )
        # Each epoch keeps its failure flags and the features' mean pairwise cosine.
        for epoch in run["epoch_metrics"]:
            assert {"collapsed", "failed", "top_share"} <= set(epoch)
            assert -1.0 <= epoch["representation_cosine"] <= 1.0
        assert run["representation_cosine"] == run["epoch_metrics"][-1]["representation_cosine"]
    # The table's mean and std are those of the raw per-seed accuracies (population std).
    table = (out / "table.md").read_text()
    for label in ("fft", "dsgd"):
        acc = [r["accuracy"] for r in results["runs"] if r["label"] == label]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} "))
        assert f"{100 * np.mean(acc):.2f} ± {100 * np.std(acc):.2f}" in row
    for name in ("seed_accuracy.png", "epoch_curves.png", "conflict_trace.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Started again with one more seed: only the new seed trains. DSGD's finished runs
    # come from the committed results.json alone (as on a new machine), FFT's from
    # their workdirs.
    shutil.rmtree(tmp_path / "runs" / "dsgd")
    trained = []
    real = stability.train_and_evaluate

    def counting(config, workdir):
        trained.append((config.method, config.seed))
        return real(config, workdir)

    monkeypatch.setattr(stability, "train_and_evaluate", counting)
    assert _cli(tmp_path, "--methods=fft,dsgd", "--seeds=42,52,62", "--conflict_every=2") == 0
    assert trained == [("fft", 62), ("dsgd", 62)]
    again = json.loads((out / "results.json").read_text())
    assert len(again["runs"]) == 6 and not again["missing"]
    kept = {(r["label"], r["seed"]): r["predictions"] for r in results["runs"]}
    for run in again["runs"]:
        if (run["label"], run["seed"]) in kept:
            assert run["predictions"] == kept[(run["label"], run["seed"])]


def test_runner_resumes_an_interrupted_seed(tmp_path):
    runs = tmp_path / "runs"
    config = BertExampleConfig(
        model="tiny", task="synthetic", num_epochs=2, learning_rate=1e-3, progress=False
    )
    specs = stability.expand_methods("fft", BertExampleConfig)
    # An interrupted run: one epoch of two checkpointed, no summary yet.
    stability.train_and_evaluate(
        config.__class__(**{**config.to_dict(), "method": "fft", "stop_after_epochs": 1}),
        runs / "fft" / "seed42",
    )
    (runs / "fft" / "seed42" / "summary.json").unlink()
    assert stability.run_state(config.__class__(**{**config.to_dict(), "method": "fft"}),
                               runs / "fft" / "seed42") == ("resume", 1)  # fmt: skip
    stability.run_protocol(config, specs, [42], runs, progress=False)
    summary = json.loads((runs / "fft" / "seed42" / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 2


def test_trace_seeds_limit_the_traced_runs():
    config = BertExampleConfig(model="tiny", task="synthetic")
    fft, focal = stability.expand_methods("fft,focal", BertExampleConfig)
    assert stability.run_config(config, fft, 52, 5).conflict_every == 5  # every seed
    assert stability.run_config(config, fft, 52, 5, trace_seeds=[42]).conflict_every == 0
    assert stability.run_config(config, fft, 42, 5, trace_seeds=[42]).conflict_every == 5
    assert stability.run_config(config, focal, 42, 5).conflict_every == 0  # FFT, DSGD only
    assert stability._trace_seeds("all") is None and stability._trace_seeds("42,52") == [42, 52]
    with pytest.raises(ValueError, match="--trace_seeds"):
        stability._trace_seeds("first")


def test_method_specs_and_errors():
    specs = stability.expand_methods("fft,dsgd-scalers,lora/lora_rank=16", BertExampleConfig)
    labels = [s.label for s in specs]
    assert labels[0] == "fft" and labels[1] == "dsgd" and labels[-1] == "lora/lora_rank=16"
    assert len(labels) == len(set(labels)) == 10
    cosine = next(s for s in specs if s.label == "dsgd/scaler=cosine/beta=0.5")
    config = cosine.apply(BertExampleConfig())
    assert (config.method, config.scaler, config.beta) == ("dsgd", "cosine", 0.5)
    assert specs[-1].apply(BertExampleConfig()).lora_rank == 16
    with pytest.raises(ValueError, match="Unknown method 'sgd'"):
        stability.expand_methods("sgd", BertExampleConfig)
    with pytest.raises(ValueError, match="not field=value"):
        stability.expand_methods("dsgd/betta=0.5", BertExampleConfig)
    # Values convert and are checked as the command line's flags are: type, choices, switches.
    with pytest.raises(ValueError, match="'high'"):
        stability.expand_methods("dsgd/beta=high", BertExampleConfig)
    with pytest.raises(ValueError, match=r"'cos'.*cosine"):
        stability.expand_methods("dsgd/scaler=cos", BertExampleConfig)
    off, on = stability.expand_methods("fft/progress=false,dsgd/progress=1", BertExampleConfig)
    assert dict(off.overrides)["progress"] is False and dict(on.overrides)["progress"] is True
    with pytest.raises(ValueError, match="'maybe'"):
        stability.expand_methods("fft/progress=maybe", BertExampleConfig)
    assert stability._seeds("3") == [42, 52, 62] and stability._seeds("7,8") == [7, 8]


def test_runner_refuses_a_workdir_with_other_settings(tmp_path, capsys):
    assert _cli(tmp_path, "--methods=fft", "--seeds=42") == 0
    capsys.readouterr()
    # The results file of the first command refuses other settings ...
    assert _cli(tmp_path, "--methods=fft", "--seeds=42", "--batch_size=8") == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "(batch_size)" in err and err.count("\n") == 2
    # ... and so does the run's workdir, with another --out.
    runs = tmp_path / "runs"
    assert stability.cli(["--example=bert", f"--out={tmp_path / 'other'}", f"--runs_dir={runs}",
                          "--no-progress", *TINY, "--methods=fft", "--seeds=42",
                          "--batch_size=8"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "seed42" in err and "(batch_size)" in err


def test_vmap_max_splits_a_methods_seeds_into_programs_of_at_most_n(tmp_path, capsys):
    status = _cli(tmp_path, "--methods=fft", "--seeds=42,52,62", "--vmap", "--vmap_max=2")
    assert status == 0, capsys.readouterr().err
    summaries = {
        s: json.loads((tmp_path / "runs" / "fft" / f"seed{s}" / "summary.json").read_text())
        for s in (42, 52, 62)
    }
    # 42 and 52 train as one program of two seeds, 62 alone.
    assert [summaries[s].get("vmapped_seeds") for s in (42, 52, 62)] == [2, 2, None]
    assert all(summaries[s]["finished"] for s in summaries)  # (vmapped = one by one: test_seeds)
    assert _cli(tmp_path / "bad", "--vmap", "--vmap_max=-1") == 2
    assert "vmap_max=-1" in capsys.readouterr().err
