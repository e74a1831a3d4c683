"""The BERT example end to end through its command line, on the tiny config."""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dsgd_jax.examples.bert import config as bert_config
from dsgd_jax.examples.bert.__main__ import main

TINY = ["--model=tiny", "--task=synthetic", "--learning_rate=1e-3", "--no-progress"]


def _run(capsys, *argv):
    status = main([*TINY, *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _params(workdir, epoch):
    manager = ocp.CheckpointManager(workdir / "checkpoints")
    tree = manager.restore(epoch)
    manager.close()
    return tree["model"]


def test_tiny_bert_epochs_through_the_cli_and_resume_exactly(tmp_path, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    status, out, _ = _run(capsys, "--num_epochs=2", f"--workdir={full}")
    assert status == 0
    for line in ("accuracy", "macro-F1", "per-class recall", "collapsed", "wall time"):
        assert line in out
    summary = json.loads((full / "summary.json").read_text())
    assert summary["task"] == "synthetic" and summary["finished"]
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 2 * 4  # 64 synthetic examples in batches of 16
    assert {"loss", "lambda", "fraction_correct"} <= set(steps[0])

    status, out, _ = _run(capsys, "--num_epochs=2", "--stop_after_epochs=1", f"--workdir={split}")
    assert status == 0 and "continue with --resume" in out
    status, _, _ = _run(capsys, "--num_epochs=2", "--resume", f"--workdir={split}")
    assert status == 0
    a, b = jax.tree.leaves(_params(full, 2)), jax.tree.leaves(_params(split, 2))
    assert len(a) == len(b) > 20
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_unknown_method_is_refused(capsys):
    status = main(["--method=sgd", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert "method='sgd' is unknown; choose one of ('fft', 'dsgd', 'focal'," in err


def test_bad_flags_are_refused_in_one_line(capsys):
    for flag, expected in [
        ("--learning_rate=fast", "--learning_rate: could not convert string to float: 'fast'"),
        ("--lr=3e-4", "unrecognized --lr=3e-4"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        (line,) = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2
        assert line.startswith(f"python -m dsgd_jax.examples.bert: error: {expected}")


def test_unknown_task_is_refused_naming_the_flag(capsys):
    status = main(["--task=drug", "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and "task='drug'" in err[0] and "drugs" in err[0]


def test_max_length_above_the_models_positions(tmp_path, capsys):
    status, _, err = _run(capsys, "--max_length=4096", f"--workdir={tmp_path}")
    assert status == 2
    assert "max_length=4096 exceeds the model's 128 position embeddings" in err


def test_checkpoint_folder_missing_a_file(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    source = bert_config.bundled_checkpoint()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(source / name)
    status = main([f"--checkpoint={folder}", f"--workdir={tmp_path / 'run'}", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "tokenizer.json" in err and str(folder) in err


def test_csv_task_with_an_unknown_label(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("text,label\ngood drug,pos\nbad drug,neg\n")
    (tmp_path / "test.csv").write_text("text,label\nso so,neutral\n")
    status, _, err = _run(
        capsys,
        "--task=csv",
        f"--csv_train={tmp_path / 'train.csv'}",
        f"--csv_test={tmp_path / 'test.csv'}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert status == 2 and "unknown label 'neutral'" in err


def test_csv_task_needs_its_files(tmp_path, capsys):
    status, _, err = _run(capsys, "--task=csv", f"--workdir={tmp_path}")
    assert status == 2 and "--csv_train" in err


def test_the_default_run_is_minilm_on_drug_reviews():
    config = bert_config.BertExampleConfig()
    assert (config.task, config.model, config.method) == ("drugs", "pretrained", "dsgd")
    model_config = config.model_config()
    assert (model_config.num_hidden_layers, model_config.hidden_size) == (6, 384)
    data = config.load_data()
    assert (len(data.train), len(data.test)) == (600, 379)
    assert data.train.inputs["input_ids"].shape[1] <= config.max_length


def test_gpu_sized_flags_parse():
    from dsgd_jax.examples.cli import parse_config

    config, workdir = parse_config(
        bert_config.BertExampleConfig,
        ["--max_length=256", "--batch_size=32", "--dtype=bfloat16"],
        prog="bert",
        description="",
    )
    assert (config.max_length, config.batch_size, config.dtype) == (256, 32, "bfloat16")
    assert str(workdir) == "runs/drugs-dsgd-s42"
