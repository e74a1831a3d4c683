"""The ViT example end to end through its command line, on the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from dsgd_jax.examples.vit.__main__ import main
from dsgd_jax.examples.vit.config import ViTExampleConfig

TINY = ["--model=tiny", "--no-progress", "--num_epochs=1", "--learning_rate=1e-3"]


def _run(capsys, *argv):
    status = main([*argv, *TINY])
    out, err = capsys.readouterr()
    return status, out, err


def _restore_model(workdir):
    manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
    tree = manager.restore(manager.latest_step())["model"]
    manager.close()
    return tree


def _flat(tree, prefix=()):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, (*prefix, str(key))))
        return out
    return {"/".join(prefix): np.asarray(tree)}


def test_tiny_vit_one_epoch_on_long_tailed_digits(tmp_path, capsys):
    status, out, _ = _run(
        capsys,
        "--init=random",
        "--dataset=digits",
        "--imbalance=longtail",
        "--ratio=10",
        f"--workdir={tmp_path}",
    )
    assert status == 0, out
    assert "accuracy" in out and "collapsed" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "digits-longtail10" and summary["finished"]
    # The training split is long-tailed as Cao et al. define it; the test split is not.
    data = ViTExampleConfig(dataset="digits", imbalance="longtail", ratio=10.0).load_data()
    balanced = ViTExampleConfig(dataset="digits", imbalance="none").load_data()
    n_max = balanced.class_counts("train").min()
    expected = [int(n_max * 10.0 ** (-i / 9)) for i in range(10)]
    assert data.class_counts("train").tolist() == expected
    assert data.class_counts("test").tolist() == balanced.class_counts("test").tolist()
    assert len(set(data.class_counts("test").tolist())) == 1


def test_pretrain_command_then_fine_tune_from_it(tmp_path, capsys):
    pretrained = tmp_path / "pretrain"
    status, out, _ = _run(capsys, "pretrain", "--dataset=digits", f"--workdir={pretrained}")
    assert status == 0, out
    assert json.loads((pretrained / "summary.json").read_text())["config"]["method"] == "fft"

    # The fine-tuning model starts from the pretrained body with a fresh head.
    config = ViTExampleConfig(
        model="tiny", dataset="mnist_5k", pretrain_workdir=str(pretrained), ratio=10.0
    )
    data = config.load_data()
    model = config.build_model(data, nnx.Rngs(params=0))
    # Pretrained on 8x8 digits, the model was saved behind the input resizer ("model/").
    saved = {k.removeprefix("model/"): v for k, v in _flat(_restore_model(pretrained)).items()}
    loaded = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    body = [k for k in saved if not k.startswith("head/")]
    assert body and set(body) <= set(loaded)
    for key in body:
        np.testing.assert_array_equal(loaded[key], saved[key])
    assert loaded["head/kernel"].shape == (32, 10)

    status, out, _ = _run(
        capsys,
        "--dataset=mnist_5k",
        "--ratio=10",
        f"--pretrain_workdir={pretrained}",
        f"--workdir={tmp_path / 'finetune'}",
    )
    assert status == 0, out


def test_missing_pretraining_is_done_first(tmp_path, capsys):
    config = ViTExampleConfig(
        model="tiny",
        dataset="digits",
        pretrain_dataset="digits",
        pretrain_workdir=str(tmp_path / "auto"),
        progress=False,
    )
    data = config.load_data()
    config.build_model(data, nnx.Rngs(params=0))
    assert "pretraining it first" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["finished"]


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    cases = [
        (["--ratio=0.5"], "ratio=0.5 is below 1"),
        (["--image_size=30"], "image_size=30 is not divisible by patch_size=7"),
        (["--init=random", "--dataset=digits", "--num_classes=20"], "has 10 classes but"),
        (["--init=npz"], "init=npz needs --npz"),
    ]
    for argv, message in cases:
        status, _, err = _run(capsys, *argv, f"--workdir={tmp_path / 'run'}")
        assert status == 2 and message in err, (argv, err)


def test_checkpoint_with_a_missing_tensor(tmp_path, capsys):
    np.savez(tmp_path / "broken.npz", cls=np.zeros((1, 1, 32), np.float32))
    status, _, err = _run(
        capsys,
        "--init=npz",
        f"--npz={tmp_path / 'broken.npz'}",
        "--dataset=digits",
        f"--workdir={tmp_path / 'run'}",
    )
    assert status == 2 and "embedding/kernel" in err
