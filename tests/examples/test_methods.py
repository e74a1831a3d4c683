"""The paper's baselines inside the shared loop: what each changes in a real run."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
from _toy import ToyConfig, saved_tree
from _toy import config as toy_config

from dsgd_jax.examples import methods
from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.fields import config_field
from dsgd_jax.examples.train import train_and_evaluate


@pytest.mark.parametrize("method", ["focal", "pcgrad", "noisytune", "lnsr", "swa"])
def test_each_baseline_trains_and_logs(tmp_path, method):
    summary = train_and_evaluate(toy_config(method=method, focal_form="sigmoid"), tmp_path)
    assert summary["finished"] and summary["method"] == method
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["kind"] == "step"]
    assert len(losses) == 14 and all(np.isfinite(losses))
    assert {r["lambda"] for r in steps if r["kind"] == "step"} == {1.0}


def test_swa_evaluates_the_average_of_the_snapshots(tmp_path):
    # 7 updates per epoch; snapshots after updates 7 and 14 = the two epoch checkpoints.
    summary = train_and_evaluate(toy_config(method="swa", swa_start=0.0, swa_every=7), tmp_path)
    trees = [jax.tree.map(np.asarray, saved_tree(tmp_path, epoch)["model"]) for epoch in (1, 2)]
    mean = {
        layer: {k: np.mean([t[layer][k] for t in trees], axis=0) for k in ("kernel", "bias")}
        for layer in ("hidden", "out")
    }
    x = ToyConfig().load_data().test.inputs["x"].astype(np.float64)
    hidden = np.tanh(x @ mean["hidden"]["kernel"] + mean["hidden"]["bias"])
    logits = hidden @ mean["out"]["kernel"] + mean["out"]["bias"]
    assert summary["predictions"] == np.argmax(logits, axis=1).tolist()
    # ... which is not what the last weights alone predict (else the test could not fail).
    last = trees[1]
    hidden = np.tanh(x @ last["hidden"]["kernel"] + last["hidden"]["bias"])
    last_logits = hidden @ last["out"]["kernel"] + last["out"]["bias"]
    assert not np.allclose(logits, last_logits, atol=1e-3)


def test_noisytune_starts_from_perturbed_weights(tmp_path):
    fft = train_and_evaluate(toy_config(method="fft", num_epochs=1), tmp_path / "fft")
    noisy = train_and_evaluate(toy_config(method="noisytune", num_epochs=1), tmp_path / "nt")
    assert fft["predictions"] != noisy["predictions"] or not np.allclose(
        saved_tree(tmp_path / "fft", 1)["model"]["hidden"]["kernel"],
        saved_tree(tmp_path / "nt", 1)["model"]["hidden"]["kernel"],
    )


def test_lora_trains_adapters_head_and_pooler_only(tmp_path):
    config = BertExampleConfig(
        model="tiny", task="synthetic", method="lora", num_epochs=1, learning_rate=1e-3,
        progress=False, lora_rank=4,
    )  # fmt: skip
    summary = train_and_evaluate(config, tmp_path / "lora")
    frozen = train_and_evaluate(
        BertExampleConfig(**{**config.to_dict(), "num_epochs": 1, "learning_rate": 1e-30,
                             "method": "fft"}),
        tmp_path / "init",
    )  # fmt: skip
    assert frozen["finished"]
    trained = saved_tree(tmp_path / "lora", 1)["model"]
    init = saved_tree(tmp_path / "init", 1)["model"]
    layer = trained["encoder"]["layers"]["0"]
    hidden = 32  # the tiny preset
    assert layer["query"]["lora_a"].shape == (hidden, 4) and layer["value"]["lora_b"].shape == (
        4,
        hidden,
    )
    # The pretrained weights (here: the seed's init, which lr 1e-30 leaves as it was) stay put.
    np.testing.assert_allclose(
        layer["query"]["base_module"]["kernel"], init["encoder"]["layers"]["0"]["query"]["kernel"],
        rtol=1e-6, atol=1e-8,
    )  # fmt: skip
    np.testing.assert_allclose(
        trained["encoder"]["embeddings"]["word_embeddings"]["embedding"],
        init["encoder"]["embeddings"]["word_embeddings"]["embedding"], rtol=1e-6, atol=1e-8,
    )  # fmt: skip
    assert np.abs(layer["value"]["lora_b"]).max() > 0  # adapters trained
    # The head and the pooler (BertClassifier.lora_also_trains) train in full.
    assert not np.allclose(trained["classifier"]["kernel"], init["classifier"]["kernel"])
    assert not np.allclose(trained["pooler"]["kernel"], init["pooler"]["kernel"])
    num_layers = len(trained["encoder"]["layers"])
    adapters = num_layers * 2 * (hidden * 4 + 4 * hidden)
    expected = adapters + (hidden * 2 + 2) + (hidden * hidden + hidden)
    assert summary["num_trainable"] == expected < summary["num_params"]


def test_methods_needing_a_head_split_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="query"):
        train_and_evaluate(toy_config(method="lora"), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"focal_gamma": -1.0}, "focal_gamma"),
        ({"swa_start": 1.0}, "swa_start"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lnsr_sigma": -0.1}, "lnsr_sigma"),
        ({"focal_form": "tanh"}, "focal_form='tanh' is unknown"),
    ],
)
def test_bad_baseline_settings(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(toy_config(**overrides), tmp_path)


@pytest.mark.parametrize("example", ["bert", "vit"])
def test_reinit_layers_resets_the_top_layers_only(example):
    """--reinit_layers=1: the top block (and BERT's pooler) back to the init's statistics
    (LayerNorm scale 1 and bias 0, kernels of std 0.02 for BERT), the rest untouched."""
    from flax import nnx

    from dsgd_jax.examples.steps import prepare_model

    if example == "bert":
        from dsgd_jax.examples.bert.model import BertClassifier, BertConfig

        model = BertClassifier(BertConfig.preset("tiny"), 3, rngs=nnx.Rngs(0))
        blocks, norm, kernel = model.encoder.layers, "output_layer_norm", "intermediate"
    else:
        from dsgd_jax.examples.vit.model import ViT, ViTConfig

        model = ViT(ViTConfig.preset("tiny"), 3, rngs=nnx.Rngs(0))
        blocks, norm, kernel = model.blocks, "ln2", None
    # Stand-in "pretrained" weights: every parameter 0.5.
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: p * 0 + 0.5, state))
    config = BertExampleConfig(model="tiny", reinit_layers=1)
    prepare_model(config, model, jax.random.key(3))
    top, below = blocks[len(blocks) - 1], blocks[0]
    np.testing.assert_array_equal(getattr(top, norm).scale[...], 1.0)
    np.testing.assert_array_equal(getattr(top, norm).bias[...], 0.0)
    for leaf in jax.tree.leaves(nnx.state(below, nnx.Param)):
        np.testing.assert_array_equal(leaf, 0.5)
    if kernel is not None:
        assert np.std(getattr(top, kernel).kernel[...]) == pytest.approx(0.02, rel=0.1)
        assert np.std(model.pooler.kernel[...]) == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="reinit_layers=9"):
        model.reinit_top_layers(9, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="reinit_layers must be >= 0"):
        BertExampleConfig(reinit_layers=-1).validate()


@dataclasses.dataclass
class _SmoothConfig:
    smooth_eps: float = config_field(0.1, "smooth: label smoothing epsilon")


class _LabelSmoothing(methods.Method):
    """The docs' "Adding a method" example: label smoothing, a new per-example loss
    with a setting of its own."""

    name = "smooth"
    config = _SmoothConfig

    def per_example_loss(self, config):
        def loss(logits, labels):
            onehot = jax.nn.one_hot(labels, logits.shape[-1])
            targets = optax.smooth_labels(onehot, config.smooth_eps)
            return optax.softmax_cross_entropy(logits, targets)

        return loss


@dataclasses.dataclass
class _SmoothToy(ToyConfig, _SmoothConfig):
    pass


@dataclasses.dataclass
class _SmoothBert(BertExampleConfig, _SmoothConfig):
    pass


class _Doubled(methods.Method):
    name = "doubled"

    def per_example_loss(self, config):
        return lambda logits, labels: 2.0 * methods.base.CE(logits, labels)


@pytest.fixture
def registered():
    added = []

    def add(method):
        methods.register(method)
        added.append(method.name)

    yield add
    for name in added:
        del methods.METHODS[name]


def _step_losses(workdir):
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "step"]


def test_a_registered_method_runs_in_the_loop_and_on_the_command_line(tmp_path, registered):
    fft = train_and_evaluate(toy_config(method="fft"), tmp_path / "fft")
    registered(_LabelSmoothing())
    smooth0 = _SmoothToy(**{**dataclasses.asdict(toy_config()), "method": "smooth"}, smooth_eps=0)
    same = train_and_evaluate(smooth0, tmp_path / "smooth0")
    # Smoothing by 0 is cross-entropy: the very run FFT makes, step for step.
    np.testing.assert_allclose(_step_losses(tmp_path / "smooth0"), _step_losses(tmp_path / "fft"))
    assert same["predictions"] == fft["predictions"] and same["method"] == "smooth"
    # Its loss is the one the step differentiates: twice CE logs twice FFT's first loss
    # (same initial weights, batch and dropout mask).
    registered(_Doubled())
    train_and_evaluate(toy_config(method="doubled", num_epochs=1), tmp_path / "doubled")
    first_fft, first_doubled = (
        _step_losses(tmp_path / "fft")[0],
        _step_losses(tmp_path / "doubled")[0],
    )
    np.testing.assert_allclose(first_doubled, 2 * first_fft, rtol=1e-6)
    train_and_evaluate(dataclasses.replace(smooth0, smooth_eps=0.3), tmp_path / "smooth3")
    assert _step_losses(tmp_path / "smooth3")[0] != pytest.approx(first_fft)
    # The examples' command line offers it, and a name already taken is refused.
    from dsgd_jax.examples.cli import parse_config
    from dsgd_jax.examples.stability import example_config

    assert example_config("bert", ["--method=smooth", "--model=tiny"], "x").method == "smooth"
    config, _ = parse_config(_SmoothBert, ["--method=smooth", "--smooth_eps=0.3"], "x", "")
    assert (config.method, config.smooth_eps, config.task) == ("smooth", 0.3, "drugs")
    with pytest.raises(ValueError, match="registered already"):
        methods.register(_Doubled())
    with pytest.raises(ValueError, match="method='nope' is unknown"):
        methods.get("nope")
