"""Out-of-range labels, NaN logits and bad arguments: never silent, always a clear message.

Eager calls raise a one-line error; under ``jit`` the bad values show as NaN (or
as "wrong"); the checked mode reports them through ``checkify``. Masked rows
may hold anything and contribute exactly nothing, gradients included.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import init_mlp, mlp, np_softmax_ce
from jax import lax
from jax.experimental import checkify

import dsgd_jax

CE = optax.losses.softmax_cross_entropy_with_integer_labels
BCE = optax.losses.sigmoid_binary_cross_entropy
SOFTMAX = dsgd_jax.make_dsgd_loss(CE, has_aux=True)
SIGMOID = dsgd_jax.make_dsgd_loss(BCE, dsgd_jax.sigmoid_correct, has_aux=True)
C = 3
LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [0.5, 0.1, 0.2], [0.0, 0.0, 4.0]])
LABELS = np.array([0, 1, 0, 2], np.int32)


def _raises_one_line(error, match, call):
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value), "the message must be one line"
    return str(info.value)


# ----------------------------------------------------------------- out-of-range labels


@pytest.mark.parametrize("bad_label", [3, 9, -1, -100])
def test_out_of_range_label_raises_eagerly_naming_value_and_fix(bad_label):
    labels = LABELS.copy()
    labels[2] = bad_label
    match = rf"labels must be class indices in \[0, 3\).*got {bad_label} at index 2\..*where="
    for call in (
        lambda: dsgd_jax.argmax_correct(LOGITS, labels),
        lambda: SOFTMAX(LOGITS, labels, scale=0.5),
        # concrete values inside jax.grad (no jit) are checked too
        lambda: jax.grad(lambda z: SOFTMAX(z, labels, scale=0.5)[0])(LOGITS),
    ):
        _raises_one_line(ValueError, match, call)


@pytest.mark.parametrize("bad_label", [3, 9, -1, -100])
def test_out_of_range_label_under_jit_is_wrong_with_nan_loss_and_gradient(bad_label):
    labels = LABELS.copy()
    labels[2] = bad_label

    @jax.jit
    def value_and_grad(z, y):
        return jax.value_and_grad(lambda z: SOFTMAX(z, y, scale=0.5), has_aux=True)(z)

    (value, aux), grad = value_and_grad(LOGITS, labels)
    assert np.isnan(float(value))
    assert np.isnan(float(aux.fraction_correct))
    np.testing.assert_array_equal(aux.correct, np.asarray(LOGITS).argmax(-1) == labels)
    assert not bool(aux.correct[2])
    grad = np.asarray(grad)
    assert np.isnan(grad[2]).any(), "the bad row must not train (its gradient is NaN)"
    # the other rows keep their plain gradient: w_i * (softmax - onehot) / n
    probs = np.exp(np.asarray(jax.nn.log_softmax(LOGITS)))
    w = np.where(np.asarray(aux.correct), 0.5, 1.0)
    for i in (0, 1, 3):
        expected = w[i] * (probs[i] - np.eye(C)[labels[i]]) / 4
        np.testing.assert_allclose(grad[i], expected, rtol=1e-5, atol=1e-7)


def test_label_minus_one_never_trains_the_last_class():
    """Before the fix a -1 label was read as class C-1 and trained towards it."""
    wrapped = jnp.array([0, 1, 0, -1])
    as_last = jnp.array([0, 1, 0, C - 1])
    jit_loss = jax.jit(lambda z, y: SOFTMAX(z, y, scale=1.0)[0])
    assert np.isfinite(float(jit_loss(LOGITS, as_last)))
    assert np.isnan(float(jit_loss(LOGITS, wrapped)))
    grads = jax.jit(jax.grad(jit_loss))(LOGITS, wrapped)
    assert np.isnan(np.asarray(grads)[3]).all()


def test_out_of_range_label_nan_reaches_the_parameters_and_apply_if_finite_skips():
    params = init_mlp(jax.random.key(0), (4, 8, C))
    x = jax.random.normal(jax.random.key(1), (6, 4))
    labels = jnp.array([0, 1, 2, 0, 7, 1])
    tx = optax.apply_if_finite(optax.sgd(0.1), max_consecutive_errors=5)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(
            lambda p: SOFTMAX(mlp(p, x), labels, scale=jnp.float32(0.5))[0]
        )(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, grads

    new_params, state, loss, grads = step(params, state)
    assert np.isnan(float(loss))
    assert all(np.isnan(np.asarray(g)).any() for g in jax.tree.leaves(grads))
    assert int(state.notfinite_count) == 1
    chex.assert_trees_all_close(new_params, params, rtol=0, atol=0)  # the step was skipped


def test_out_of_range_one_hot_and_soft_labels():
    onehot = np.eye(C, dtype=np.float32)[LABELS]
    loss = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy)
    for bad, shown in ((np.nan, "nan"), (-0.5, "-0.5"), (2.0, "2.0")):
        labels = onehot.copy()
        labels[1, 2] = bad
        _raises_one_line(
            ValueError,
            rf"labels of the logits' shape \(4, 3\).*must be in \[0, 1\]; got {shown} at "
            r"index \(1, 2\)",
            lambda labels=labels: dsgd_jax.argmax_correct(LOGITS, labels),
        )
        correct = jax.jit(dsgd_jax.argmax_correct)(LOGITS, labels)
        np.testing.assert_array_equal(correct, [True, False, True, True])
        assert np.isnan(float(jax.jit(lambda z, y: loss(z, y, scale=0.5))(LOGITS, labels)))


def test_uint8_labels_with_more_classes_than_the_dtype_holds():
    logits = jnp.zeros((3, 300)).at[jnp.arange(3), jnp.array([0, 255, 7])].set(1.0)
    labels = np.array([0, 255, 8], np.uint8)
    np.testing.assert_array_equal(dsgd_jax.argmax_correct(logits, labels), [True, True, False])


# ----------------------------------------------------------------------- sigmoid labels


@pytest.mark.parametrize(("bad", "shown"), [(5.0, "5.0"), (-3.0, "-3.0"), (np.nan, "nan")])
def test_sigmoid_labels_outside_unit_interval(bad, shown):
    logits = jnp.array([[1.5, -0.2], [-3.0, 0.4]])
    labels = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    labels[1, 0] = bad
    match = rf"labels must be targets in \[0, 1\].*got {shown} at index \(1, 0\)\."
    _raises_one_line(ValueError, match, lambda: dsgd_jax.sigmoid_correct(logits, labels))
    _raises_one_line(ValueError, match, lambda: SIGMOID(logits, labels, scale=0.5))
    correct = jax.jit(dsgd_jax.sigmoid_correct)(logits, labels)
    np.testing.assert_array_equal(correct, [[True, True], [False, True]])
    value, aux = jax.jit(lambda z, y: SIGMOID(z, y, scale=0.5))(logits, labels)
    assert np.isnan(float(value))
    assert np.isnan(float(aux.fraction_correct))
    # integer labels out of {0, 1} too
    with pytest.raises(ValueError, match=r"got 2 at index \(0, 1\)"):
        dsgd_jax.sigmoid_correct(logits, np.array([[1, 2], [0, 1]], np.int32))


# -------------------------------------------------------------------------- NaN logits


def test_nan_logits_row_is_never_counted_correct():
    # argmax of a row holding NaN is the NaN's index: with label 0 / 1 it used to count correct
    logits = np.array([[np.nan, 1.0, 2.0], [1.0, np.nan, 0.0], [3.0, 1.0, 2.0]], np.float32)
    labels = np.array([0, 1, 0], np.int32)
    expected = (logits.argmax(-1) == labels) & ~np.isnan(logits).any(-1)
    np.testing.assert_array_equal(expected, [False, False, True])
    np.testing.assert_array_equal(jax.jit(dsgd_jax.argmax_correct)(logits, labels), expected)
    onehot = np.eye(3, dtype=np.float32)[labels]
    np.testing.assert_array_equal(jax.jit(dsgd_jax.argmax_correct)(logits, onehot), expected)
    message = _raises_one_line(
        ValueError,
        r"logits rows must not hold NaN.*got NaN at index 0, NaN at index 1\..*where=",
        lambda: dsgd_jax.argmax_correct(logits, labels),
    )
    assert "debug_nans" in message

    # sigmoid: NaN > 0 is False, which used to match a 0 label
    z = np.array([np.nan, 1.0, -1.0], np.float32)
    y = np.array([0.0, 1.0, 0.0], np.float32)
    np.testing.assert_array_equal(jax.jit(dsgd_jax.sigmoid_correct)(z, y), [False, True, True])
    with pytest.raises(ValueError, match=r"logits must not hold NaN.*got NaN at index 0\."):
        dsgd_jax.sigmoid_correct(z, y)


def test_nan_logits_in_a_dsgd_loss_under_jit_show_as_nan():
    logits = LOGITS.at[1, 1].set(jnp.nan)
    value, aux = jax.jit(lambda z: SOFTMAX(z, LABELS, scale=0.5))(logits)
    assert np.isnan(float(value))
    assert np.isnan(float(aux.fraction_correct))
    np.testing.assert_array_equal(aux.correct, [True, False, True, True])
    with pytest.raises(ValueError, match=r"logits rows must not hold NaN.*got NaN at index 1\."):
        SOFTMAX(logits, LABELS, scale=0.5)


def test_custom_correct_fn_still_checks_class_labels_and_nan_logits():
    def my_correct(logits, labels):
        return jnp.argmax(logits, -1) == labels

    loss_fn = dsgd_jax.make_dsgd_loss(CE, my_correct, has_aux=True)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\).*got -1"):
        loss_fn(LOGITS, np.array([0, 1, -1, 2], np.int32), scale=0.5)
    with pytest.raises(ValueError, match=r"logits must not hold NaN.*got NaN at index \(0, 0\)"):
        loss_fn(LOGITS.at[0, 0].set(jnp.nan), LABELS, scale=0.5)
    value, aux = jax.jit(lambda y: loss_fn(LOGITS, y, scale=0.5))(np.array([0, 1, -1, 2]))
    assert np.isnan(float(value))
    assert not bool(aux.correct[2])


# ---------------------------------------------------------------------- masked padding


def _mask_problem(kind, seed=0, batch=12):
    k_p, k_x, k_y, k_m = jax.random.split(jax.random.key(seed), 4)
    params = init_mlp(k_p, (5, 16, C))
    x = jax.random.normal(k_x, (batch, 5))
    y = np.asarray(jax.random.randint(k_y, (batch,), 0, C))
    keep = np.array(jax.random.bernoulli(k_m, 0.6, (batch,)))
    keep[:2] = True
    keep[-2:] = False
    if kind == "int":
        loss_fn = dsgd_jax.make_dsgd_loss(CE)
        labels = y.astype(np.int32)
        padded = labels.copy()
        padded[~keep] = -100  # the usual ignore index
    elif kind == "onehot":
        loss_fn = dsgd_jax.make_dsgd_loss(optax.losses.softmax_cross_entropy)
        labels = np.eye(C, dtype=np.float32)[y]
        padded = labels.copy()
        padded[~keep] = np.nan
    else:
        loss_fn = dsgd_jax.make_dsgd_loss(BCE, dsgd_jax.sigmoid_correct)
        labels = (np.asarray(jax.random.uniform(k_y, (batch, C))) > 0.5).astype(np.float32)
        padded = labels.copy()
        padded[~keep] = 7.0
    return params, x, labels, padded, keep, loss_fn


@pytest.mark.parametrize("kind", ["int", "onehot", "sigmoid"])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("jit", [False, True])
def test_masked_rows_with_nan_or_inf_logits_give_exactly_zero_gradient(kind, poison, jit):
    params, x, labels, padded, keep, loss_fn = _mask_problem(kind)
    # padded rows of the logits are NaN / inf, as garbage in padding can make them
    offset = jnp.asarray(np.where(keep[:, None], 0.0, poison).astype(np.float32))

    def masked(p, z_offset):
        logits = mlp(p, x) + z_offset
        return loss_fn(logits, padded, scale=0.3, where=jnp.asarray(keep))

    def removed(p):  # the reference: the padded rows are not there at all
        return loss_fn(mlp(p, x[keep]), labels[keep], scale=0.3)

    grad_fn = jax.value_and_grad(masked, argnums=(0, 1))
    if jit:
        grad_fn = jax.jit(grad_fn)
    value, (grads, offset_grad) = grad_fn(params, offset)
    ref_value, ref_grads = jax.value_and_grad(removed)(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    offset_grad = np.asarray(offset_grad)
    assert np.all(offset_grad[~keep] == 0.0), "padded rows must get exactly zero gradient"
    assert np.all(np.isfinite(offset_grad))


def test_masked_rows_are_not_correct_and_not_checked():
    labels = np.array([0, 1, -100, 2], np.int32)
    logits = LOGITS.at[2].set(jnp.nan)
    where = jnp.array([True, True, False, True])
    value, aux = SOFTMAX(logits, labels, scale=0.5, where=where)
    keep = np.asarray(where)
    ce = np_softmax_ce(np.asarray(LOGITS)[keep], labels[keep])
    correct = np.asarray(LOGITS)[keep].argmax(-1) == labels[keep]
    np.testing.assert_allclose(value, (np.where(correct, 0.5, 1.0) * ce).mean(), rtol=1e-6)
    np.testing.assert_array_equal(aux.correct, [True, True, False, True])
    np.testing.assert_array_equal(aux.weights, [0.5, 0.5, 0.0, 0.5])
    assert float(aux.fraction_correct) == 1.0
    # the predicates take the same mask
    np.testing.assert_array_equal(
        dsgd_jax.argmax_correct(logits, labels, where=where), [True, True, False, True]
    )
    np.testing.assert_array_equal(
        dsgd_jax.sigmoid_correct(
            jnp.array([[1.0], [jnp.nan]]), jnp.array([[1.0], [9.0]]), where=jnp.array([1, 0], bool)
        ),
        [[True], [False]],
    )


# -------------------------------------------------------------------------- checked mode


def _checked(fn):
    return jax.jit(checkify.checkify(fn, errors=checkify.user_checks))


def test_checked_mode_reports_bad_labels_and_nan_logits_under_jit():
    loss_fn = dsgd_jax.make_dsgd_loss(CE, checked=True)
    f = _checked(lambda z, y, m: loss_fn(z, y, scale=0.5, where=m))
    all_valid = jnp.ones(4, bool)

    err, value = f(LOGITS, LABELS, all_valid)
    assert err.get() is None
    np.testing.assert_allclose(value, SOFTMAX(LOGITS, LABELS, scale=0.5)[0], rtol=1e-6)

    err, _ = f(LOGITS, np.array([0, 1, 9, 2], np.int32), all_valid)
    assert err.get() is not None
    assert "labels must be class indices in [0, 3)" in err.get()
    assert "got 9 at flat index 2" in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match="got 9 at flat index 2"):
        err.throw()

    err, _ = f(LOGITS.at[3, 0].set(jnp.nan), LABELS, all_valid)
    assert "logits rows must not hold NaN" in err.get()
    assert "flat index 3" in err.get()

    # masked rows are not checked
    err, _ = f(
        LOGITS.at[2].set(jnp.nan), np.array([0, 1, -100, 2], np.int32), all_valid.at[2].set(False)
    )
    assert err.get() is None


def test_checked_mode_of_the_predicates_and_collapse_check():
    f = _checked(functools.partial(dsgd_jax.sigmoid_correct, checked=True))
    err, _ = f(jnp.array([1.0, -1.0]), jnp.array([1.0, -3.0]))
    assert (
        "labels must be targets in [0, 1]" in err.get() and "got -3.0 at flat index 1" in err.get()
    )
    f = _checked(functools.partial(dsgd_jax.argmax_correct, checked=True))
    err, _ = f(LOGITS, np.array([0, 1, 0, -1], np.int32))
    assert "got -1 at flat index 3" in err.get()
    f = _checked(lambda p: dsgd_jax.collapse_check(p, 3, checked=True))
    err, _ = f(jnp.array([0, 1, 5, 1]))
    assert "predictions must be class indices in [0, 3)" in err.get()
    assert "got 5 at flat index 2" in err.get()
    err, _ = f(jnp.array([0, 1, 2, 1]))
    assert err.get() is None


def test_unchecked_jit_path_holds_no_checks_or_callbacks():
    def step(z, y, m):
        return jax.value_and_grad(lambda z: SOFTMAX(z, y, scale=0.5, where=m)[0])(z)

    jaxpr = str(jax.make_jaxpr(step)(LOGITS, LABELS, jnp.ones(4, bool)))
    for primitive in ("check", "callback", "debug"):
        assert primitive not in jaxpr
    checked = dsgd_jax.make_dsgd_loss(CE, checked=True)
    checked_jaxpr = jax.make_jaxpr(lambda z: checked(z, LABELS, scale=0.5))(LOGITS)
    assert "check" in str(checked_jaxpr)  # the checked mode is what adds them


# -------------------------------------------------------------------------- collapse_check


def test_collapse_check_rejects_out_of_range_predictions_eagerly():
    message = _raises_one_line(
        ValueError,
        r"predictions must be class indices in \[0, 3\).*got 5 at index 0, -1 at index 3\.",
        lambda: dsgd_jax.collapse_check(jnp.array([5, 1, 1, -1]), 3),
    )
    assert "num_classes" in message
    # masked-out predictions are not checked
    stats = dsgd_jax.collapse_check(
        jnp.array([5, 1, 1, -1]), 3, where=jnp.array([False, True, True, False])
    )
    assert int(stats.majority_class) == 1 and float(stats.majority_share) == 1.0


def test_collapse_check_under_jit_counts_out_of_range_in_no_class():
    pred = np.array([5, 5, -1, 0, 2, 2, 9], np.int32)
    stats = jax.jit(dsgd_jax.collapse_check, static_argnums=1)(pred, 3)
    # NumPy reference: in-range predictions counted per class, all predictions in the total
    in_range = (pred >= 0) & (pred < 3)
    counts = np.bincount(pred[in_range], minlength=3)
    assert int(stats.majority_class) == counts.argmax() == 2
    np.testing.assert_allclose(stats.majority_share, counts.max() / len(pred), rtol=1e-6)
    assert not bool(stats.collapsed)  # used to be collapsed onto class 0 with share 1.0
    all_out = jax.jit(dsgd_jax.collapse_check, static_argnums=1)(np.array([5, 5, -1]), 3)
    assert float(all_out.majority_share) == 0.0 and not bool(all_out.collapsed)


@pytest.mark.parametrize("num_classes", [0, -2])
def test_collapse_check_num_classes_message_is_about_classes(num_classes):
    message = _raises_one_line(
        ValueError,
        rf"num_classes must be > 0, got {num_classes}\..*classes",
        lambda: dsgd_jax.collapse_check(jnp.zeros(4, jnp.int32), num_classes),
    )
    assert "optimizer" not in message and "scaler" not in message
    message = _raises_one_line(
        TypeError,
        r"num_classes must be an int.*num_classes=logits.shape\[-1\]",
        lambda: dsgd_jax.collapse_check(jnp.zeros(4, jnp.int32), 2.0),
    )
    assert "optimizer" not in message


def test_mask_messages_name_the_right_array():
    message = _raises_one_line(
        ValueError,
        r"where has shape \(3,\), which fits neither the predictions \(shape \(4,\)\)",
        lambda: dsgd_jax.collapse_check(jnp.zeros(4, jnp.int32), 2, where=jnp.ones(3, bool)),
    )
    assert "loss" not in message
    message = _raises_one_line(
        ValueError,
        r"where has shape \(2,\), which fits neither the rows of features \(shape \(3,\)\)",
        lambda: dsgd_jax.mean_pairwise_cosine(jnp.ones((3, 2)), where=jnp.ones(2, bool)),
    )
    assert "loss" not in message


def test_scaler_messages_talk_about_optimizer_updates():
    for factory in (dsgd_jax.linear_scaler, dsgd_jax.cosine_scaler, dsgd_jax.descending_scaler):
        message = _raises_one_line(
            ValueError, r"total_steps must be > 0", lambda f=factory: f(1.0, total_steps=0)
        )
        assert "optimizer updates" in message and "class" not in message


# ----------------------------------------------------------------------- gradient_conflict


def _conflict_problem():
    params = init_mlp(jax.random.key(3), (4, 8, C))
    x = jax.random.normal(jax.random.key(4), (10, 4))
    y = jax.random.randint(jax.random.key(5), (10,), 0, C)
    return params, x, y


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_conflict_with_a_nan_loss_reports_nan_cosine(jit):
    params, x, y = _conflict_problem()

    def loss_fn(p, x, y):
        logits = mlp(p, x)
        losses = CE(logits, y)
        # one example's loss is NaN (its value only: its gradient stays finite)
        losses = losses + jnp.where(jnp.arange(10) == 4, jnp.nan, 0.0) * lax.stop_gradient(losses)
        return losses, dsgd_jax.argmax_correct(logits, y)

    conflict = functools.partial(dsgd_jax.gradient_conflict, loss_fn)
    if jit:
        conflict = jax.jit(conflict)
    stats = conflict(params, x, y)
    assert np.isnan(float(stats.cosine)), "a NaN loss must not read as 'no conflict' (0.0)"

    # finite losses with a NaN gradient: d sqrt(|w|) / dw at 0 is inf * 0
    def nan_grad_loss(w):
        return jnp.stack([jnp.sqrt(jnp.abs(w)), (w - 1.0) ** 2]), jnp.array([True, False])

    stats = dsgd_jax.gradient_conflict(nan_grad_loss, jnp.float32(0.0))
    assert not np.isfinite(float(stats.wrong_norm) * float(stats.correct_norm))
    assert np.isnan(float(stats.cosine))

    # a masked NaN loss is left out: the cosine is the one of the clean loss, same mask
    def clean_loss(p, x, y):
        logits = mlp(p, x)
        return CE(logits, y), dsgd_jax.argmax_correct(logits, y)

    keep = jnp.arange(10) != 4
    masked = dsgd_jax.gradient_conflict(loss_fn, params, x, y, where=keep)
    clean = dsgd_jax.gradient_conflict(clean_loss, params, x, y, where=keep)
    assert np.isfinite(float(masked.cosine))
    np.testing.assert_allclose(masked.cosine, clean.cosine, rtol=1e-6)


def test_gradient_conflict_rejects_scalar_losses_int_params_and_non_pairs():
    params, x, y = _conflict_problem()

    def scalar_loss(p):
        logits = mlp(p, x)
        return CE(logits, y).mean(), jnp.array(True)

    _raises_one_line(
        ValueError,
        r"loss_fn returned a scalar loss.*one loss per example.*without \.mean\(\)",
        lambda: dsgd_jax.gradient_conflict(scalar_loss, params),
    )
    int_params = {"w": jnp.ones((2, 2)), "steps": jnp.int32(3)}

    def uses_int(p):
        losses = jnp.sum(p["w"], axis=1)
        return losses, losses > 0

    _raises_one_line(
        TypeError,
        r"params must hold float arrays.*\['steps'\] has dtype int32.*astype\(jnp.float32\)",
        lambda: dsgd_jax.gradient_conflict(uses_int, int_params),
    )
    _raises_one_line(
        TypeError,
        r"loss_fn must return a pair \(per_example_loss, correct\), got one array of shape "
        r"\(2,\)",
        lambda: dsgd_jax.gradient_conflict(lambda w: jnp.stack([w, w]), jnp.float32(1.0)),
    )


# ------------------------------------------------------------------------- vague errors


def test_scale_none_axis_out_of_range_and_scalar_loss_messages():
    _raises_one_line(
        TypeError,
        r"scale is None; pass the DSGD scale.*scale=scaler\(dsgd_jax.step_count\(opt_state\)\)",
        lambda: SOFTMAX(LOGITS, LABELS, scale=None),
    )
    _raises_one_line(
        TypeError,
        r"scale is None",
        lambda: dsgd_jax.scaled_mean(jnp.ones(2), jnp.ones(2, bool), None),
    )
    axis_match = r"axis=5 is out of range for logits of shape \(4, 3\) \(rank 2\).*\[-2, 2\)"
    _raises_one_line(ValueError, axis_match, lambda: SOFTMAX(LOGITS, LABELS, scale=0.5, axis=5))
    _raises_one_line(
        ValueError, axis_match, lambda: dsgd_jax.argmax_correct(LOGITS, LABELS, axis=5)
    )
    _raises_one_line(
        ValueError,
        r"axis=-3 is out of range",
        lambda: dsgd_jax.make_dsgd_loss(CE, functools.partial(dsgd_jax.argmax_correct, axis=-3))(
            LOGITS, LABELS, scale=0.5
        ),
    )
    _raises_one_line(
        ValueError,
        r"loss_fn returned a scalar, but DSGD needs one loss per example.*not its \.mean\(\)",
        lambda: dsgd_jax.make_dsgd_loss(lambda z, y: CE(z, y).mean())(LOGITS, LABELS, scale=0.5),
    )
    _raises_one_line(
        ValueError,
        r"per_example_loss is a scalar",
        lambda: dsgd_jax.scaled_mean(jnp.float32(1.0), jnp.ones(3, bool), 0.5),
    )


@pytest.mark.parametrize("jit", [False, True])
def test_axis_name_outside_a_mapped_context(jit):
    def call(z):
        return SOFTMAX(z, LABELS, scale=0.5, axis_name="batch")[0]

    if jit:
        call = jax.jit(call)
    _raises_one_line(
        ValueError,
        r"axis_name='batch' names no mapped axis here.*jax\.pmap\(\.\.\., axis_name='batch'\)"
        r".*shard_map.*axis_name=None",
        lambda: call(LOGITS),
    )


def test_axis_reaches_the_default_predicate_and_a_bound_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, C, 6)).astype(np.float32)  # classes on axis 1
    labels = rng.integers(0, C, size=(4, 6)).astype(np.int32)
    # NumPy reference with the classes moved last
    moved = np.moveaxis(logits, 1, -1).reshape(-1, C)
    flat_labels = labels.reshape(-1)
    correct = moved.argmax(-1) == flat_labels
    assert 0 < correct.sum() < correct.size
    expected = (np.where(correct, 0.25, 1.0) * np_softmax_ce(moved, flat_labels)).mean()

    value, aux = jax.jit(lambda z: SOFTMAX(z, labels, scale=0.25, axis=1))(logits)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux.correct).reshape(-1), correct)
    bound = dsgd_jax.make_dsgd_loss(CE, functools.partial(dsgd_jax.argmax_correct, axis=1))
    np.testing.assert_allclose(bound(logits, labels, scale=0.25, axis=1), expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"axis=2 goes to loss_fn but correct_fn reads"):
        bound(logits, labels, scale=0.25, axis=2)
    # the shape error points at both ways of setting the axis
    message = _raises_one_line(
        ValueError,
        r"labels has shape \(4, 6\).*axis=1.*functools\.partial\(dsgd_jax\.argmax_correct",
        lambda: dsgd_jax.argmax_correct(logits, labels),
    )
    assert "pass axis=1 to it" in message


# ------------------------------------------------------------------------ data parallel


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake) devices; see conftest.py")
def test_pmap_padding_is_ignored_and_a_bad_label_poisons_every_device():
    n_dev, per = 4, 3
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(n_dev, per, C)).astype(np.float32)
    labels = rng.integers(0, C, size=(n_dev, per)).astype(np.int32)
    keep = np.ones((n_dev, per), bool)
    keep[1, 1:] = False
    keep[3, :] = False
    padded_logits = np.where(keep[..., None], logits, np.nan).astype(np.float32)
    padded_labels = np.where(keep, labels, -100).astype(np.int32)

    def local(z, y, m):
        return SOFTMAX(z, y, scale=0.5, where=m, axis_name="i")

    devices = jax.devices()[:n_dev]
    value, aux = jax.pmap(local, axis_name="i", devices=devices)(padded_logits, padded_labels, keep)
    flat_keep = keep.reshape(-1)
    z, y = logits.reshape(-1, C)[flat_keep], labels.reshape(-1)[flat_keep]
    w = np.where(z.argmax(-1) == y, 0.5, 1.0)
    np.testing.assert_allclose(value, np.full(n_dev, (w * np_softmax_ce(z, y)).mean()), rtol=1e-6)
    np.testing.assert_allclose(aux.fraction_correct, np.full(n_dev, (w == 0.5).mean()), rtol=1e-6)

    bad_labels = padded_labels.copy()
    bad_labels[0, 0] = 7  # on a valid row of device 0
    value, aux = jax.pmap(local, axis_name="i", devices=devices)(padded_logits, bad_labels, keep)
    assert np.isnan(np.asarray(value)).all()
    assert np.isnan(np.asarray(aux.fraction_correct)).all()
