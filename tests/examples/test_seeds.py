"""Seeds vmapped into one program give the same runs as one run per seed."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from _toy import config as toy_config
from _toy import saved_tree, truncate_largest_file

from dsgd_jax.examples.seeds import train_seeds
from dsgd_jax.examples.train import train_and_evaluate

SEEDS = (42, 52)


def _steps(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "fft"},
        {"method": "dsgd", "conflict_every": 4, "dropout_bits": 16},
        {"method": "pcgrad"},
        {"method": "lnsr"},
        {"method": "swa", "swa_start": 0.5},
        {"method": "noisytune"},
        {"method": "focal"},
    ],
    ids=["fft", "dsgd-dropout16", "pcgrad", "lnsr", "swa", "noisytune", "focal"],
)
def test_vmapped_seeds_equal_sequential_runs(tmp_path, overrides):
    config = toy_config(**overrides)
    sequential = [
        train_and_evaluate(dataclasses.replace(config, seed=s), tmp_path / "seq" / str(s))
        for s in SEEDS
    ]
    vmapped = train_seeds(config, SEEDS, [tmp_path / "vmap" / str(s) for s in SEEDS])
    assert [s["seed"] for s in vmapped] == list(SEEDS)
    for seq, vec in zip(sequential, vmapped, strict=True):
        assert vec["vmapped_seeds"] == len(SEEDS) and vec["finished"]
        assert vec["predictions"] == seq["predictions"]
        assert vec["accuracy"] == seq["accuracy"]
        a = jax.tree.leaves(saved_tree(tmp_path / "seq" / str(seq["seed"]), 2))
        b = jax.tree.leaves(saved_tree(tmp_path / "vmap" / str(seq["seed"]), 2))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
        seq_steps = _steps(tmp_path / "seq" / str(seq["seed"]))
        vec_steps = _steps(tmp_path / "vmap" / str(seq["seed"]))
        assert [r["step"] for r in vec_steps] == [r["step"] for r in seq_steps]
        np.testing.assert_allclose(
            [r["loss"] for r in vec_steps], [r["loss"] for r in seq_steps], rtol=1e-5
        )
    # Different seeds really are different runs.
    first = [saved_tree(tmp_path / "vmap" / str(s), 2)["model"]["out"]["kernel"] for s in SEEDS]
    assert not np.allclose(first[0], first[1])


def _assert_same_run(a, b):
    """The runs in workdirs ``a`` and ``b`` end with the same bits and log the same lines."""
    x, y = jax.tree.leaves(saved_tree(a, 3)), jax.tree.leaves(saved_tree(b, 3))
    assert len(x) == len(y) > 0
    for u, v in zip(x, y, strict=True):
        np.testing.assert_array_equal(u, v)
    assert (b / "metrics.jsonl").read_text() == (a / "metrics.jsonl").read_text()


def test_vmapped_group_stops_and_resumes_exactly(tmp_path):
    config = toy_config(num_epochs=3)
    dirs = [tmp_path / "split" / str(s) for s in SEEDS[:2]]
    full = train_seeds(config, SEEDS[:2], [tmp_path / "full" / str(s) for s in SEEDS[:2]])
    first = train_seeds(dataclasses.replace(config, stop_after_epochs=1), SEEDS[:2], dirs)
    assert [s["epochs"] for s in first] == [1, 1] and not first[0]["finished"]
    resumed = train_seeds(dataclasses.replace(config, resume=True), SEEDS[:2], dirs)
    for a, b, seed in zip(full, resumed, SEEDS, strict=True):
        assert b["finished"] and a["predictions"] == b["predictions"]
        _assert_same_run(tmp_path / "full" / str(seed), tmp_path / "split" / str(seed))


@pytest.mark.parametrize("damaged", [(1,), (0, 1)], ids=["one seed", "every seed"])
def test_a_damaged_newest_checkpoint_sends_the_group_back_to_the_common_epoch(
    tmp_path, capsys, damaged
):
    config = toy_config(num_epochs=3)
    dirs = [tmp_path / "split" / str(s) for s in SEEDS[:2]]
    train_seeds(config, SEEDS[:2], [tmp_path / "full" / str(s) for s in SEEDS[:2]])
    train_seeds(dataclasses.replace(config, stop_after_epochs=2), SEEDS[:2], dirs)
    for i in damaged:  # their epoch 2 reads back as junk
        truncate_largest_file(dirs[i] / "checkpoints" / "2")
    capsys.readouterr()
    resumed = train_seeds(dataclasses.replace(config, resume=True), SEEDS[:2], dirs)
    assert "epoch 2" in capsys.readouterr().err
    for seed, run in zip(SEEDS, resumed, strict=True):  # both trained epochs 2 and 3 again
        assert run["finished"]
        _assert_same_run(tmp_path / "full" / str(seed), tmp_path / "split" / str(seed))


def test_seeds_at_different_epochs_are_refused(tmp_path):
    config = toy_config(num_epochs=2)
    train_and_evaluate(dataclasses.replace(config, seed=42, stop_after_epochs=1), tmp_path / "a")
    with pytest.raises(ValueError, match="different epochs"):
        train_seeds(
            dataclasses.replace(config, resume=True), [42, 52], [tmp_path / "a", tmp_path / "b"]
        )


@pytest.mark.parametrize(
    ("seeds", "dirs", "match"),
    [
        ([], [], "distinct and non-empty"),
        ([1, 1], ["a", "b"], "distinct"),
        ([1], [], "one workdir"),
    ],
)
def test_bad_seed_arguments(tmp_path, seeds, dirs, match):
    with pytest.raises(ValueError, match=match):
        train_seeds(toy_config(), seeds, [tmp_path / d for d in dirs])


@pytest.mark.skipif(jax.device_count() < 4, reason="the root conftest.py asks for fake devices")
def test_vmapped_seeds_on_a_mesh_equal_them_on_one_device(tmp_path):
    # Each seed's batch [S, B, ...] is split over the devices along B: same runs as on one.
    config = toy_config(batch_size=8, eval_batch_size=8)
    one = train_seeds(config, SEEDS, [tmp_path / "one" / str(s) for s in SEEDS])
    mesh = dataclasses.replace(config, mesh="data:4")
    four = train_seeds(mesh, SEEDS, [tmp_path / "four" / str(s) for s in SEEDS])
    for a, b in zip(one, four, strict=True):
        assert b["predictions"] == a["predictions"] and b["finished"]
        x = jax.tree.leaves(saved_tree(tmp_path / "one" / str(a["seed"]), 2))
        y = jax.tree.leaves(saved_tree(tmp_path / "four" / str(a["seed"]), 2))
        assert len(x) == len(y) > 0
        for u, v in zip(x, y, strict=True):
            np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-5)
