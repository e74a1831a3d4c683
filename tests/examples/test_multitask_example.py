"""Several tasks on one encoder (the paper's Appendix F): a head per task, in the one loop.

References are independent of the code under test: each example's loss and
prediction are recomputed in NumPy from the raw model's logits of its own task's
columns, the DSGD gradient from two jax.grad passes over hand-sliced heads, PCGrad
over K groups from a NumPy loop, per-task accuracy from the saved predictions.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy import ToyMLP, saved_tree
from flax import nnx

import dsgd_jax
from dsgd_jax.examples import loop, multitask
from dsgd_jax.examples.bert.__main__ import main
from dsgd_jax.examples.bert.config import BertExampleConfig
from dsgd_jax.examples.data import ArraySplit, TaskData
from dsgd_jax.examples.methods import pcgrad
from dsgd_jax.examples.seeds import train_seeds
from dsgd_jax.examples.train import train_and_evaluate
from tests._helpers import np_log_softmax

HEADS = (multitask.Head("a", ("n", "y"), 0), multitask.Head("b", ("x", "y", "z"), 2))
TINY = BertExampleConfig(
    model="tiny", task="synthetic+synthetic3", synthetic_size=24, batch_size=8, num_epochs=2,
    learning_rate=1e-3, log_every=2, progress=False,
)  # fmt: skip


def _task(x, labels, classes):
    x = np.asarray(x, np.int32)
    split = ArraySplit({"ids": x, "mask": np.ones_like(x)}, np.asarray(labels))
    return TaskData(split, split, classes, {"vocab_size": 9})


def test_join_tasks_moves_labels_to_slots_and_pads_sequences():
    a = _task([[1, 2, 3], [4, 5, 6]], [1, 0], ("n", "y"))
    b = _task([[7], [8], [9]], [2, 0, 1], ("x", "y", "z"))
    data = multitask.join_tasks({"a": a, "b": b}, pad_values={"ids": 0})
    assert data.train.labels.tolist() == [1, 0, 4, 2, 3]
    assert data.train.inputs["task"].tolist() == [0, 0, 1, 1, 1]
    assert data.train.inputs["ids"].tolist()[2:] == [[7, 0, 0], [8, 0, 0], [9, 0, 0]]
    assert data.train.inputs["mask"].tolist()[2] == [1, 0, 0]  # padding is not attended
    assert data.num_classes == 5 and data.class_names[2] == "b/x"
    assert [h.offset for h in data.heads] == [0, 2] and data.meta["vocab_size"] == 9


def test_join_tasks_refuses_what_it_cannot_join():
    a = _task([[1, 2]], [0], ("n", "y"))
    with pytest.raises(ValueError, match="at least 2 tasks"):
        multitask.join_tasks({"a": a})
    split = ArraySplit({"ids": np.ones((1, 2), np.int32)}, np.array([0]))
    other = TaskData(split, split, ("n", "y"))
    with pytest.raises(ValueError, match="same inputs"):
        multitask.join_tasks({"a": a, "b": other})


def _toy_heads(seed=0):
    model = ToyMLP(4, 5, rngs=nnx.Rngs(seed))
    return multitask.TaskHeads(model, HEADS)


def _batch(seed=1, n=10):
    rng = np.random.default_rng(seed)
    task = rng.integers(0, 2, n).astype(np.int32)
    labels = np.where(task == 0, rng.integers(0, 2, n), 2 + rng.integers(0, 3, n)).astype(np.int32)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "task": task}, labels


def _own_slice(logits, task, labels):
    """NumPy: each row's logits of its own task's classes, and its label there."""
    rows = []
    for z, t, y in zip(np.asarray(logits), task, labels, strict=True):
        head = HEADS[t]
        rows.append((z[head.offset : head.offset + len(head.class_names)], y - head.offset))
    return rows


def test_each_example_sees_only_its_own_head():
    model = _toy_heads()
    inputs, labels = _batch()
    raw = model.model(inputs)
    masked = model(inputs)
    ce = np.asarray(jax.vmap(lambda z, y: -jax.nn.log_softmax(z)[y])(masked, jnp.asarray(labels)))
    for i, (z, y) in enumerate(_own_slice(raw, inputs["task"], labels)):
        assert ce[i] == pytest.approx(-np_log_softmax(z)[y], rel=1e-5)
        assert int(np.argmax(np.asarray(masked[i]))) - HEADS[inputs["task"][i]].offset == int(
            np.argmax(z)
        )


def test_dsgd_gradient_of_mixed_tasks_equals_two_passes_over_hand_sliced_heads():
    model = _toy_heads()
    inputs, labels = _batch(n=12)
    valid = np.ones(12, bool)
    valid[-2:] = False
    scale = 0.3
    loss = dsgd_jax.make_dsgd_loss(
        lambda z, y: -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0],
        dsgd_jax.argmax_correct,
    )
    graphdef, params = nnx.split(model, nnx.Param)
    grads = jax.grad(
        lambda p: loss(nnx.merge(graphdef, p)(inputs), labels, scale=scale, where=valid)
    )(params)

    raw_logits = np.asarray(model.model(inputs))
    rows = _own_slice(raw_logits, inputs["task"], labels)
    correct = np.array([np.argmax(z) == y for z, y in rows]) & valid
    wrong = ~correct & valid
    assert correct.any() and wrong.any()

    def group_loss(p, mask):  # the raw model, each row's own columns cut out by hand
        logits = nnx.merge(graphdef, p).model(inputs)
        total = 0.0
        for i in np.flatnonzero(mask):
            head = HEADS[inputs["task"][i]]
            z = logits[i, head.offset : head.offset + len(head.class_names)]
            total = total - jax.nn.log_softmax(z)[labels[i] - head.offset]
        return total

    g_w = jax.grad(group_loss)(params, wrong)
    g_c = jax.grad(group_loss)(params, correct)
    n = float(valid.sum())
    leaves = zip(jax.tree.leaves(grads), jax.tree.leaves(g_w), jax.tree.leaves(g_c), strict=True)
    for got, w, c in leaves:
        want = (np.asarray(w) + scale * np.asarray(c)) / n
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # A head's columns learn from its own task's examples only.
    only_a = {"x": inputs["x"], "task": np.zeros(12, np.int32)}
    labels_a = labels % 2
    g = jax.grad(lambda p: loss(nnx.merge(graphdef, p)(only_a), labels_a, scale=1.0))(params)
    kernel = np.asarray(g["model"]["out"]["kernel"])
    assert np.all(kernel[:, 2:] == 0) and np.any(kernel[:, :2] != 0)


def test_classify_without_the_task_is_refused():
    model = _toy_heads()
    inputs, _ = _batch()
    with pytest.raises(ValueError, match="task"):
        model.classify(model.features(inputs))


def test_round_robin_alternates_tasks_and_proportional_is_the_single_task_shuffle():
    split = ArraySplit(
        {"x": np.zeros((7, 1)), "task": np.array([0, 0, 1, 1, 1, 1, 1])},
        np.array([0, 1, 2, 3, 4, 2, 3]),
    )
    data = TaskData(split, split, ("a/n", "a/y", "b/x", "b/y", "b/z"), heads=HEADS)
    order = multitask.round_robin_order(data, 5, 2)
    assert sorted(order.tolist()) == list(range(7))
    tasks = split.inputs["task"][order].tolist()
    assert tasks == [0, 1, 0, 1, 1, 1, 1]  # a runs out after two turns
    assert not np.array_equal(order, multitask.round_robin_order(data, 5, 3))
    # Proportional mixing is the loop's single-task order over every task's examples.
    np.testing.assert_array_equal(
        loop.data_order(5, 2, 7), np.random.default_rng([5, 2]).permutation(7)
    )
    with pytest.raises(ValueError, match="task_mixing"):
        dataclasses.replace(TINY, task_mixing="zip").validate()


def _np_pcgrad(grads):
    """Yu et al.'s projection, the other groups visited in index order, in NumPy."""
    grads = [np.asarray(g, np.float64) for g in grads]
    out = np.zeros_like(grads[0])
    for i, g in enumerate(grads):
        p = g.copy()
        for j, h in enumerate(grads):
            if j != i and p @ h < 0:
                p = p - (p @ h) / (h @ h) * h
        out += p
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_pcgrad_over_k_groups_matches_numpy(k):
    rng = np.random.default_rng(k)
    grads = [rng.normal(size=6).astype(np.float32) for _ in range(k)]
    grads[0] = -grads[1] + 0.1 * grads[0]  # make sure something conflicts
    got = pcgrad.pcgrad_combine_many([jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(np.asarray(got), _np_pcgrad(grads), rtol=1e-5, atol=1e-6)
    if k == 2:
        two = pcgrad.pcgrad_combine(jnp.asarray(grads[0]), jnp.asarray(grads[1]))
        np.testing.assert_allclose(np.asarray(two), np.asarray(got), rtol=1e-6)


def test_pcgrad_with_tasks_as_groups_projects_the_tasks_gradients():
    model = _toy_heads()
    inputs, labels = _batch(n=12)
    graphdef, params = nnx.split(model, nnx.Param)

    def per_example(p):
        logits = nnx.merge(graphdef, p)(inputs)
        losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)[:, 0]
        return losses, dsgd_jax.argmax_correct(logits, labels)

    loss, grads, _ = pcgrad.pcgrad_groups_value_and_grad(per_example, params, inputs["task"], 2)
    per_task = [
        jax.grad(lambda p, t=t: jnp.sum(jnp.where(inputs["task"] == t, per_example(p)[0], 0)) / 12)(
            params
        )
        for t in range(2)
    ]
    flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in per_task]
    want = _np_pcgrad(flat)
    got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert float(loss) == pytest.approx(float(np.mean(per_example(params)[0])), rel=1e-6)


# ------------------------------------------------------------------ the BERT example, end to end


def _test_split(config=TINY):
    data = config.load_data()
    return data.test.labels, data.test.inputs["task"], data.heads


def test_two_tasks_train_with_a_head_each_and_are_evaluated_apart(tmp_path):
    summary = train_and_evaluate(TINY, tmp_path)
    labels, task, heads = _test_split()
    predictions = np.array(summary["predictions"])
    assert [h.name for h in heads] == ["synthetic", "synthetic3"]
    assert set(summary["tasks"]) == {"synthetic", "synthetic3"}
    accuracies = []
    for t, head in enumerate(heads):
        mine = predictions[task == t]
        assert set(mine.tolist()) <= set(head.slots)  # never another task's class
        accuracy = float(np.mean(mine == labels[task == t]))
        accuracies.append(accuracy)
        assert summary["tasks"][head.name]["accuracy"] == pytest.approx(accuracy)
        assert summary["tasks"][head.name]["collapsed"] == (len(set(mine.tolist())) == 1)
    assert summary["accuracy"] == pytest.approx(np.mean(accuracies))
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]
    assert all("tasks" in r for r in epochs if r["kind"] == "epoch")


def test_multitask_run_stops_and_resumes_exactly(tmp_path):
    config = dataclasses.replace(TINY, task_mixing="round_robin")
    full = train_and_evaluate(config, tmp_path / "full")
    first = train_and_evaluate(dataclasses.replace(config, stop_after_epochs=1), tmp_path / "split")
    assert first["epochs"] == 1
    resumed = train_and_evaluate(dataclasses.replace(config, resume=True), tmp_path / "split")
    assert resumed["finished"] and resumed["predictions"] == full["predictions"]
    a, b = (
        jax.tree.leaves(saved_tree(tmp_path / "full", 2)),
        jax.tree.leaves(saved_tree(tmp_path / "split", 2)),
    )
    assert len(a) == len(b) > 20
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == full_log


@pytest.mark.parametrize("method", ["dsgd", "pcgrad"])
def test_multitask_seeds_vmapped_equal_sequential_runs(tmp_path, method):
    config = dataclasses.replace(TINY, method=method, pcgrad_groups="tasks", num_epochs=1)
    seeds = (42, 52)
    sequential = [
        train_and_evaluate(dataclasses.replace(config, seed=s), tmp_path / "seq" / str(s))
        for s in seeds
    ]
    vmapped = train_seeds(config, seeds, [tmp_path / "vmap" / str(s) for s in seeds])
    for seq, vec in zip(sequential, vmapped, strict=True):
        assert vec["predictions"] == seq["predictions"]
        assert vec["tasks"]["synthetic3"]["accuracy"] == seq["tasks"]["synthetic3"]["accuracy"]
        a = jax.tree.leaves(saved_tree(tmp_path / "seq" / str(seq["seed"]), 1))
        b = jax.tree.leaves(saved_tree(tmp_path / "vmap" / str(seq["seed"]), 1))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lnsr", "lora"])
def test_methods_that_split_the_head_see_each_tasks_head(tmp_path, method):
    # LNSR calls features() and classify() itself, LoRA trains the head by its name.
    config = dataclasses.replace(TINY, method=method, num_epochs=1, synthetic_size=16)
    summary = train_and_evaluate(config, tmp_path)
    _, task, heads = _test_split(config)
    predictions = np.array(summary["predictions"])
    for t, head in enumerate(heads):
        assert set(predictions[task == t].tolist()) <= set(head.slots)
    if method == "lora":  # the heads (one layer, 5 outputs) and the pooler train in full
        hidden = 32
        assert summary["num_trainable"] > (hidden + 1) * 5 + (hidden + 1) * hidden
        assert summary["num_trainable"] < summary["num_params"] // 100


def test_round_robin_needs_several_tasks(tmp_path):
    config = dataclasses.replace(TINY, task="synthetic", task_mixing="round_robin")
    with pytest.raises(ValueError, match="task_mixing"):
        train_and_evaluate(config, tmp_path)


def test_pcgrad_over_tasks_needs_several_tasks(tmp_path):
    config = dataclasses.replace(TINY, task="synthetic", method="pcgrad", pcgrad_groups="tasks")
    with pytest.raises(ValueError, match="pcgrad_groups"):
        train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize("task", ["synthetic+nope", "synthetic+synthetic", "drugs+"])
def test_bad_task_lists_are_refused_in_one_line(capsys, task):
    status = main(["--model=tiny", f"--task={task}", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and f"task={task!r}" in err[0]


def test_protocol_on_two_tasks_reports_each_task_from_its_predictions(tmp_path):
    from dsgd_jax.examples import stability

    out = tmp_path / "out"
    argv = [
        "--example=bert", f"--out={out}", f"--runs_dir={tmp_path / 'runs'}", "--no-progress",
        "--model=tiny", "--task=synthetic+synthetic3", "--synthetic_size=24", "--batch_size=8",
        "--num_epochs=1", "--learning_rate=3e-3", "--methods=fft,pcgrad/pcgrad_groups=tasks",
        "--seeds=42,52", "--vmap",
    ]  # fmt: skip
    assert stability.cli(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [h["name"] for h in results["heads"]] == ["synthetic", "synthetic3"]
    labels = np.array(results["test_labels"])
    lines = (out / "table.md").read_text().split("\n\n")[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in lines[2:]]
    rows = {r[0]: r for r in cells}
    for label in ("fft", "pcgrad/pcgrad_groups=tasks"):
        runs = [r for r in results["runs"] if r["label"] == label]
        per_seed = []
        for head in results["heads"]:
            low, high = head["offset"], head["offset"] + len(head["class_names"])
            rows_t = (labels >= low) & (labels < high)
            acc = [np.mean(np.array(r["predictions"])[rows_t] == labels[rows_t]) for r in runs]
            per_seed.append(acc)
            cell = rows[label][header.index(f"{head['name']} accuracy (%)")]
            mean, std = (float(x) for x in cell.split(" ± "))
            assert mean == pytest.approx(100 * np.mean(acc), abs=0.006)
            assert std == pytest.approx(100 * np.std(acc), abs=0.006)
            majority = np.unique(labels[rows_t], return_counts=True)[1].max()
            failed = sum(
                np.sum(np.array(r["predictions"])[rows_t] == labels[rows_t]) <= majority
                for r in runs
            )
            assert rows[label][header.index(f"{head['name']} failed")] == f"{failed}/2"
        average = np.mean(per_seed, axis=0)
        mean, std = (float(x) for x in rows[label][header.index("average (%)")].split(" ± "))
        assert mean == pytest.approx(100 * average.mean(), abs=0.006)
    for name in ("seed_accuracy-synthetic.png", "seed_accuracy-synthetic3.png"):
        assert (out / name).stat().st_size > 0


def test_cli_prints_each_tasks_numbers(tmp_path, capsys):
    argv = ["--model=tiny", "--task=synthetic+synthetic3", "--num_epochs=1", "--no-progress"]
    assert main([*argv, f"--workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads((tmp_path / "summary.json").read_text())
    printed = [float(line.split()[-1]) for line in out if line.strip().startswith("accuracy")]
    want = [summary["tasks"][t]["accuracy"] for t in ("synthetic", "synthetic3")]
    assert printed == pytest.approx(want, abs=5e-5)
    average = [float(line.split()[-1]) for line in out if "average accuracy" in line]
    assert average == pytest.approx([np.mean(want)], abs=5e-5)


def test_a_pair_task_and_a_single_sentence_task_join():
    import tensorflow_datasets as tfds

    config = dataclasses.replace(TINY, task="glue/rte+glue/cola", max_length=32)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        data = config.load_data()
    task = data.train.inputs["task"]
    assert [h.name for h in data.heads] == ["glue/rte", "glue/cola"] and len(data.train) == 12
    types = data.train.inputs["token_type_ids"]
    assert types[task == 0].max() == 1 and types[task == 1].max() == 0  # RTE has 2 segments
    mask = data.train.inputs["attention_mask"]
    ids = data.train.inputs["input_ids"]
    assert np.all(ids[mask == 0] == 0)  # MiniLM's [PAD] fills the shorter task's rows
    assert set(data.train.labels[task == 1].tolist()) <= {2, 3}
