"""Fault tests: each kills, corrupts or misuses a run, then checks that nothing is lost,
nothing trains silently, and the user gets one line naming the problem and the fix."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from _toy import ToyConfig, saved_tree, truncate_largest_file
from _toy import config as toy_config

from dsgd_jax.examples import checkpoint, files, interrupt, stability
from dsgd_jax.examples.metrics import MetricsLog
from dsgd_jax.examples.train import train_and_evaluate

TINY = ["--model=tiny", "--task=synthetic", "--num_epochs=1", "--learning_rate=1e-3"]


def _same_params(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def _one_error_line(err: str) -> str:
    """The error line of a command's stderr, checking it is one line plus the hint."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# --- checkpoints: damaged newest -> the one before, bit-identical in the end ---------


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bits(folder):
    path = _largest_file(folder)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


_truncate = truncate_largest_file


def _delete_metadata(folder):
    for path in folder.rglob("_METADATA"):
        path.unlink()


def _empty(folder):
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


@pytest.mark.parametrize("damage", [_flip_bits, _truncate, _delete_metadata, _empty])
def test_damaged_newest_checkpoint_falls_back_and_ends_bit_identical(tmp_path, capsys, damage):
    config = toy_config(num_epochs=3)
    train_and_evaluate(config, tmp_path / "full")
    train_and_evaluate(dataclasses.replace(config, stop_after_epochs=2), tmp_path / "split")
    damage(tmp_path / "split" / "checkpoints" / "2")
    capsys.readouterr()
    resumed = train_and_evaluate(dataclasses.replace(config, resume=True), tmp_path / "split")
    err = capsys.readouterr().err
    assert "epoch 2" in err and "falling back" in err
    assert resumed["finished"]
    _same_params(saved_tree(tmp_path / "full", 3), saved_tree(tmp_path / "split", 3))
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == full_log


def test_checkpoints_record_their_digest_and_settings(tmp_path):
    config = toy_config(num_epochs=2)
    train_and_evaluate(config, tmp_path)
    digests = json.loads((tmp_path / "checkpoints" / checkpoint.DIGESTS).read_text())
    assert set(digests) == {"1", "2"}
    # The recorded digest is that of the tree read back independently of the loop.
    assert digests["2"]["sha256"] == checkpoint.tree_digest(saved_tree(tmp_path, 2))
    assert digests["2"]["config"]["learning_rate"] == config.learning_rate


def test_a_failed_checkpoint_write_is_reported_for_its_epoch(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(OSError, match=r"epoch 1 .*No space left on device.*--resume"):
        train_and_evaluate(toy_config(num_epochs=3), tmp_path)
    steps = MetricsLog(tmp_path / "metrics.jsonl").read()
    assert max(r["epoch"] for r in steps) == 1  # epoch 2 never trained


# --- settings: a run resumes only with its own ------------------------------------


def test_resume_without_config_json_uses_the_settings_saved_with_the_checkpoint(tmp_path):
    train_and_evaluate(toy_config(num_epochs=2, stop_after_epochs=1), tmp_path)
    (tmp_path / "config.json").unlink()
    changed = toy_config(num_epochs=2, learning_rate=1e-3, resume=True)
    with pytest.raises(ValueError, match=r"learning_rate: 0.01 -> 0.001"):
        train_and_evaluate(changed, tmp_path)
    same = train_and_evaluate(toy_config(num_epochs=2, resume=True), tmp_path)
    assert same["finished"]


# --- one run per workdir ---------------------------------------------------------------


def test_a_live_run_locks_its_workdir(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / files.LOCK_NAME).write_text(f"{owner.pid} {os.uname().nodename}\n")
        with pytest.raises(files.WorkdirBusy, match=f"in use by process {owner.pid}"):
            train_and_evaluate(toy_config(), tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its stale lock is taken over, with a message.
    summary = train_and_evaluate(toy_config(), tmp_path)
    assert summary["finished"] and not (tmp_path / files.LOCK_NAME).exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    with pytest.raises(FloatingPointError):
        train_and_evaluate(toy_config(poison=True), tmp_path)
    assert not (tmp_path / files.LOCK_NAME).exists()


def test_two_processes_on_one_workdir(tmp_path):
    """The second of two real processes started on one workdir stops at once."""
    code = (
        "import sys, time; from dsgd_jax.examples import files\n"
        "with files.workdir_lock(sys.argv[1]):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
        )
        assert second.returncode != 0 and f"in use by process {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
        first.stdout.close()


# --- logs and results files: torn or narrower, never lost --------------------------------


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path, capsys):
    config = toy_config(num_epochs=2)
    train_and_evaluate(config, tmp_path / "full")
    train_and_evaluate(dataclasses.replace(config, stop_after_epochs=1), tmp_path / "split")
    with (tmp_path / "split" / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "epoch": 2, "st')  # a write cut short
    resumed = train_and_evaluate(dataclasses.replace(config, resume=True), tmp_path / "split")
    assert resumed["finished"] and "torn last line" in capsys.readouterr().err
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == full_log


def test_a_damaged_line_before_the_last_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "epoch": 1}\n{"kind": \n{"kind": "step", "epoch": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is damaged"):
        MetricsLog(path).read()


def _protocol(tmp_path, *argv):
    out, runs = tmp_path / "out", tmp_path / "runs"
    return stability.cli(
        ["--example=bert", f"--out={out}", f"--runs_dir={runs}", "--no-progress", *TINY, *argv]
    )


def _keys(path):
    return {(r["label"], r["seed"]) for r in json.loads(path.read_text())["runs"]}


def test_results_file_never_shrinks(tmp_path, monkeypatch):
    assert _protocol(tmp_path, "--methods=fft,dsgd", "--seeds=42,52") == 0
    results = tmp_path / "out" / "results.json"
    before = json.loads(results.read_text())
    assert len(before["runs"]) == 4

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(stability, "train_and_evaluate", refuse)
    assert _protocol(tmp_path, "--methods=fft", "--seeds=1") == 0
    after = json.loads(results.read_text())
    assert _keys(results) == {(m, s) for m in ("fft", "dsgd") for s in (42, 52)}
    assert after["methods"] == ["fft", "dsgd"] and after["seeds"] == [42, 52]
    assert len(after["commands"]) == 2 and after["command"] == after["commands"][-1]
    kept = {(r["label"], r["seed"]): r["predictions"] for r in before["runs"]}
    for run in after["runs"]:
        assert run["predictions"] == kept[run["label"], run["seed"]]


def test_a_torn_results_file_is_moved_aside_not_lost(tmp_path, capsys):
    assert _protocol(tmp_path, "--methods=fft", "--seeds=42") == 0
    results = tmp_path / "out" / "results.json"
    text = results.read_text()
    results.write_text(text[: len(text) // 2])
    capsys.readouterr()
    assert _protocol(tmp_path, "--methods=fft", "--seeds=42") == 0
    assert "damaged" in capsys.readouterr().err
    (aside,) = (tmp_path / "out").glob("results.json.damaged-*")
    assert aside.read_text() == text[: len(text) // 2]
    assert _keys(results) == {("fft", 42)}  # found again in its workdir


def test_results_of_other_settings_are_not_mixed(tmp_path, capsys):
    assert _protocol(tmp_path, "--methods=fft", "--seeds=42") == 0
    before = (tmp_path / "out" / "results.json").read_text()
    capsys.readouterr()
    assert _protocol(tmp_path, "--methods=fft", "--seeds=42", "--learning_rate=5e-3") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "results.json" in line and "learning_rate" in line and "--out" in line
    assert (tmp_path / "out" / "results.json").read_text() == before


# --- Ctrl-C: the next step boundary, one line, 130 ---------------------------------------


def _ctrl_c_after(seconds):
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_stops_a_run_at_a_step_boundary(tmp_path, capsys):
    from dsgd_jax.examples.bert.__main__ import main

    argv = [*TINY, "--num_epochs=40", f"--workdir={tmp_path}", "--no-progress"]
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs under nohup ... &
    timer = _ctrl_c_after(8.0)
    try:
        status = main(argv)
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert status == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert not (tmp_path / files.LOCK_NAME).exists()
    # What was saved resumes: the run goes on from its last finished epoch.
    epochs = [r["epoch"] for r in MetricsLog(tmp_path / "metrics.jsonl").read()]
    assert epochs == sorted(epochs)  # nothing logged twice or out of order
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found is back


@pytest.mark.parametrize("after", [0.0, 2.0, 4.0])
def test_ctrl_c_to_a_real_process_never_crashes_or_is_ignored(tmp_path, after):
    """SIGINT to ``python -m dsgd_jax.examples.bert`` at several moments once it has
    locked its workdir (compiling, training, evaluating): it ends with 130 and one
    line, never a crash (a negative status), never a run that trains on."""
    import time

    command = [sys.executable, "-m", "dsgd_jax.examples.bert", *TINY, "--num_epochs=30",
               f"--workdir={tmp_path}", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / files.LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    epochs = [r["epoch"] for r in MetricsLog(tmp_path / "metrics.jsonl").read()]
    assert not epochs or max(epochs) < 30  # it stopped, it did not train to the end


def test_ctrl_c_handler_only_sets_a_flag():
    with interrupt.stop_at_step_boundary():
        interrupt.check()  # nothing pressed yet
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested()
        with pytest.raises(interrupt.Interrupted):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert not interrupt.requested()


def test_ctrl_c_stops_the_protocol_with_one_line(tmp_path, capsys):
    timer = _ctrl_c_after(6.0)
    try:
        status = _protocol(tmp_path, "--methods=fft,dsgd", "--seeds=42,52,62", "--num_epochs=20")
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert status == 130 and "interrupted" in err and "Traceback" not in err


# --- bad inputs: one line naming the flag or file and the fix ----------------------------


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not safetensors at all" * 50])
def test_a_damaged_safetensors_file_is_one_line(tmp_path, capsys, content):
    from dsgd_jax.examples.bert.__main__ import main
    from dsgd_jax.examples.bert.data import bundled_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((bundled_checkpoint() / name).read_bytes())
    (folder / "model.safetensors").write_bytes(content)
    argv = ["--task=synthetic", f"--checkpoint={folder}", f"--workdir={tmp_path / 'w'}"]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "model.safetensors" in line and "not a readable safetensors file" in line


def test_a_truncated_real_safetensors_file_is_one_line(tmp_path, capsys):
    from dsgd_jax.examples.bert.__main__ import main
    from dsgd_jax.examples.bert.data import bundled_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((bundled_checkpoint() / name).read_bytes())
    real = (bundled_checkpoint() / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(real[: len(real) // 2])
    assert main(["--task=synthetic", f"--checkpoint={folder}", f"--workdir={tmp_path}/w"]) == 2
    assert "not a readable safetensors file" in _one_error_line(capsys.readouterr().err)


def test_tfds_tasks_without_tensorflow_datasets_are_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    from dsgd_jax.examples.bert.__main__ import main as bert
    from dsgd_jax.examples.vit.__main__ import main as vit

    real = importlib.util.find_spec

    def missing(name, *args, **kwargs):
        return None if name == "tensorflow_datasets" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    assert bert(["--task=glue/rte", f"--workdir={tmp_path}/b"]) == 2
    assert 'pip install "dsgd-jax[tfds]"' in _one_error_line(capsys.readouterr().err)
    assert vit(["--dataset=cifar10", "--init=random", f"--workdir={tmp_path}/v"]) == 2
    assert 'pip install "dsgd-jax[tfds]"' in _one_error_line(capsys.readouterr().err)


def test_csv_row_without_a_label_is_named(tmp_path, capsys):
    from dsgd_jax.examples.bert.__main__ import main

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\ngood film,pos\nbad film,neg\nno label here\n")
    test.write_text("text,label\nfine,pos\n")
    argv = ["--model=tiny", "--task=csv", f"--csv_train={train}", f"--csv_test={test}",
            f"--workdir={tmp_path}/w"]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.csv row 3 (line 4) has no label in column 'label'" in line


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "1.0"])
def test_classifier_dropout_outside_0_1_is_refused(tmp_path, capsys, rate):
    from dsgd_jax.examples.bert.__main__ import main

    assert main([*TINY, f"--classifier_dropout={rate}", f"--workdir={tmp_path}"]) == 2
    assert "classifier_dropout" in _one_error_line(capsys.readouterr().err)


def test_accumulation_left_over_is_announced(tmp_path, capsys):
    # 50 examples in batches of 8: 7 micro-batches x 2 epochs = 14; 14 % 3 = 2 left over.
    train_and_evaluate(toy_config(grad_accum_steps=3), tmp_path)
    err = capsys.readouterr().err
    assert "grad_accum_steps=3" in err and "last 2" in err
    train_and_evaluate(toy_config(grad_accum_steps=2), tmp_path / "even")
    assert "grad_accum_steps" not in capsys.readouterr().err


def test_pretrain_workdir_of_another_run_names_the_flag(tmp_path):
    from dsgd_jax.examples.vit.config import ViTExampleConfig, run_pretraining

    other = tmp_path / "pretrain"
    train_and_evaluate(toy_config(num_epochs=1, stop_after_epochs=1), other)
    finetune = ViTExampleConfig(model="tiny", pretrain_workdir=str(other), progress=False)
    with pytest.raises(ValueError, match=r"--pretrain_workdir") as error:
        run_pretraining(finetune, other)
    assert "--resume" not in str(error.value)


def test_toy_fixture_is_unchanged():
    # Guards the toy task the tests above rely on: 50 train examples, 3 classes.
    data = ToyConfig().load_data()
    assert len(data.train) == 50 and data.num_classes == 3
