"""The baselines the DSGD paper compares against, as reusable JAX / Optax / Flax NNX code.

- Focal losses (Lin et al. 2017): :func:`softmax_focal_loss`, :func:`sigmoid_focal_loss`.
- PCGrad (Yu et al. 2020) with the wrong and the correct examples as its two tasks:
  :func:`pcgrad_combine`, :func:`pcgrad_value_and_grad`.
- NoisyTune (Wu et al. 2022), a one-off perturbation before fine-tuning:
  :func:`noisytune`, :func:`noisytune_model`.
- SWA (Izmailov et al. 2018) as an optax transformation: :func:`swa`,
  :func:`swa_params`, :func:`swa_count`.
- LNSR (Hua et al. 2021), a noise-stability penalty on the model's last layers:
  :func:`lnsr_penalty`.
- LoRA (Hu et al. 2022) on top of ``flax.nnx.LoRA``: :class:`ScaledLoRA`,
  :func:`add_lora`, :func:`lora_trainable`.

LNSR and LoRA need a model split into ``features(inputs, *, rngs=None)`` and
``classify(features, *, rngs=None, noise=(None, None))`` with a ``head_name`` (the attribute
of the freshly initialised classifier), as the BERT and ViT examples' models have.

>>> import jax.numpy as jnp
>>> logits = jnp.array([[2.0, 0.0, -1.0]])
>>> softmax_focal_loss(logits, jnp.array([0]), gamma=0.0).shape
(1,)
>>> pcgrad_combine({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([-1.0, 1.0])})["w"]
Array([0.5, 1.5], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = [
    "SWAState",
    "ScaledLoRA",
    "add_lora",
    "lnsr_penalty",
    "lora_trainable",
    "noisytune",
    "noisytune_model",
    "pcgrad_combine",
    "pcgrad_value_and_grad",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "swa",
    "swa_count",
    "swa_params",
]


# ---------------------------------------------------------------------------- focal losses


def _check_focal(alpha: float, gamma: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (the weight of the positive class)")
    if not gamma >= 0.0:
        raise ValueError(f"gamma={gamma} must be >= 0 (gamma=0 gives alpha * cross-entropy)")


def _check_labels(logits: jax.Array, labels: jax.Array, name: str) -> None:
    if logits.ndim < 1 or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{name}: labels have shape {tuple(labels.shape)} but logits {tuple(logits.shape)}; "
            "pass integer labels of the logits' shape without the last (class) axis"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")


def softmax_focal_loss(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Per-example softmax focal loss ``-alpha * (1 - p_t)**gamma * log p_t``, float32.

    Args:
      logits: ``[..., C]`` class scores.
      labels: integer class indices of shape ``logits.shape[:-1]``.
      alpha: constant weight in [0, 1].
      gamma: focusing exponent >= 0; ``gamma=0`` gives ``alpha`` times cross-entropy.

    Returns:
      The loss of each example, shape ``logits.shape[:-1]``; ``p_t`` is the softmax
      probability of the true class and ``log p_t`` comes from ``log_softmax``.
    """
    _check_focal(alpha, gamma)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "softmax_focal_loss")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_pt = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    one_minus_pt = -jnp.expm1(log_pt)  # 1 - p_t without cancellation
    return -alpha * jnp.power(one_minus_pt, gamma) * log_pt


def sigmoid_focal_loss(
    logits: jax.Array, labels: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Per-example sigmoid focal loss of Lin et al., summed over the classes, float32.

    The integer labels become one-hot targets ``y`` over the ``C`` classes; each entry
    costs ``-alpha_t * (1 - p_t)**gamma * log p_t`` with ``p_t = sigmoid(z)`` and
    ``alpha_t = alpha`` where ``y = 1``, ``p_t = 1 - sigmoid(z)`` and
    ``alpha_t = 1 - alpha`` where ``y = 0``.

    Args:
      logits: ``[..., C]`` class scores.
      labels: integer class indices of shape ``logits.shape[:-1]``.
      alpha: weight of the positive entries, in [0, 1].
      gamma: focusing exponent >= 0.

    Returns:
      The loss of each example, shape ``logits.shape[:-1]``.
    """
    _check_focal(alpha, gamma)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_labels(logits, labels, "sigmoid_focal_loss")
    z = logits.astype(jnp.float32)
    positive = jax.nn.one_hot(labels, z.shape[-1], dtype=jnp.bool_)
    log_pt = jnp.where(positive, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))
    alpha_t = jnp.where(positive, jnp.float32(alpha), jnp.float32(1.0 - alpha))
    loss = -alpha_t * jnp.power(-jnp.expm1(log_pt), gamma) * log_pt
    return jnp.sum(loss, axis=-1)


# ------------------------------------------------------------------------------------ PCGrad


def _tree_dot(a: Any, b: Any) -> jax.Array:
    """Sum over the leaves of ``vdot`` in float32 (a global dot product)."""
    products = [
        jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(products, jnp.float32(0.0))


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, 0 where ``den`` is 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def pcgrad_combine(g_wrong: Any, g_correct: Any) -> Any:
    """PCGrad with two tasks: the wrong group's and the correct group's gradient.

    Dot products and norms are global over all leaves. When the two conflict
    (``dot(g_W, g_C) < 0``) each is projected onto the normal plane of the *original*
    other, ``g_W' = g_W - dot / |g_C|^2 g_C`` and ``g_C' = g_C - dot / |g_W|^2 g_W``, and
    ``g_W' + g_C'`` is returned; otherwise ``g_W + g_C``. A zero group gradient never
    conflicts, so the result stays finite.

    Args:
      g_wrong: gradient pytree of the wrong (misclassified) examples.
      g_correct: gradient pytree of the correct examples, same structure.

    Returns:
      The combined gradient, same structure and leaf dtypes as ``g_wrong``.
    """
    if jax.tree.structure(g_wrong) != jax.tree.structure(g_correct):
        raise ValueError(
            "pcgrad_combine: g_wrong and g_correct must be pytrees of the same structure, got "
            f"{jax.tree.structure(g_wrong)} and {jax.tree.structure(g_correct)}"
        )
    dot = _tree_dot(g_wrong, g_correct)
    conflict = dot < 0
    # g_W' + g_C' = (1 - dot / |g_W|^2) g_W + (1 - dot / |g_C|^2) g_C when conflicting.
    c_wrong = jnp.where(conflict, _safe_div(dot, _tree_dot(g_wrong, g_wrong)), 0.0)
    c_correct = jnp.where(conflict, _safe_div(dot, _tree_dot(g_correct, g_correct)), 0.0)

    def combine(w, c):
        out = (1.0 - c_wrong) * w.astype(jnp.float32) + (1.0 - c_correct) * c.astype(jnp.float32)
        return out.astype(w.dtype)

    return jax.tree.map(combine, g_wrong, g_correct)


def pcgrad_value_and_grad(
    per_example_fn: Callable[[Any], tuple[jax.Array, jax.Array]],
    params: Any,
    *,
    where: jax.Array | None = None,
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """Mean loss and its PCGrad gradient, wrong vs. correct examples as the two tasks.

    One forward pass (``jax.vjp``) and two backward passes, with cotangents
    ``mask_W / n`` and ``mask_C / n`` (``n`` valid examples, at least 1), give the
    gradients ``g_W`` and ``g_C`` of the two groups' shares of the mean loss; their sum
    is the plain gradient of the mean, and :func:`pcgrad_combine` resolves a conflict.

    Args:
      per_example_fn: ``params -> (losses [B], correct [B] bool)``.
      params: the pytree to differentiate.
      where: optional ``[B]`` bool mask of the valid examples (padding is False).

    Returns:
      ``(loss, grads, aux)``: the mean loss over the valid examples, the combined
      gradient, and ``dict(fraction_correct=..., cosine=cos(g_W, g_C))`` (cosine 0 when
      a group is empty).
    """
    (losses, correct), vjp_fn = _vjp_with_aux(per_example_fn, params)
    if losses.shape != correct.shape:
        raise ValueError(
            f"pcgrad_value_and_grad: per_example_fn returned losses of shape {losses.shape} "
            f"and correct of shape {correct.shape}; they must be the same ([B])"
        )
    valid = jnp.ones(losses.shape, jnp.bool_) if where is None else jnp.asarray(where, jnp.bool_)
    if valid.shape != losses.shape:
        raise ValueError(
            f"pcgrad_value_and_grad: where has shape {valid.shape} but the losses "
            f"{losses.shape}; pass a bool mask of the losses' shape"
        )
    correct = jnp.asarray(correct, jnp.bool_)
    mask_c = valid & correct
    mask_w = valid & ~correct
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
    losses32 = losses.astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, losses32, 0.0)) / n
    (g_wrong,) = vjp_fn(mask_w.astype(losses.dtype) / n.astype(losses.dtype))
    (g_correct,) = vjp_fn(mask_c.astype(losses.dtype) / n.astype(losses.dtype))
    grads = pcgrad_combine(g_wrong, g_correct)
    norms = jnp.sqrt(_tree_dot(g_wrong, g_wrong)) * jnp.sqrt(_tree_dot(g_correct, g_correct))
    aux = {
        "fraction_correct": jnp.sum(mask_c, dtype=jnp.int32).astype(jnp.float32) / n,
        "cosine": _safe_div(_tree_dot(g_wrong, g_correct), norms),
    }
    return loss, grads, aux


def _vjp_with_aux(per_example_fn, params):
    """``jax.vjp`` of the losses, with ``correct`` carried as auxiliary output."""
    primal, vjp_fn, correct = jax.vjp(lambda p: tuple(per_example_fn(p)), params, has_aux=True)
    return (primal, correct), vjp_fn


# --------------------------------------------------------------------------------- NoisyTune


def noisytune(params: Any, key: jax.Array, *, noise_lambda: float = 0.15) -> Any:
    """NoisyTune: perturb every matrix-like leaf once, before fine-tuning.

    Each floating leaf ``W`` with ``ndim >= 2`` (weight matrices, conv kernels,
    embeddings) becomes ``W + (U - 0.5) * noise_lambda * std(W)`` with ``U`` uniform in
    [0, 1), drawn with ``jax.random.fold_in(key, i)`` for the ``i``-th leaf (in
    ``jax.tree.leaves`` order), so each leaf gets its own draw. Vectors (biases,
    LayerNorm scales) and scalars are unchanged.

    Args:
      params: any pytree of arrays, e.g. ``nnx.state(model, nnx.Param)``.
      key: PRNG key.
      noise_lambda: relative noise intensity, >= 0.

    Returns:
      A pytree of the same structure and dtypes.
    """
    if not noise_lambda >= 0:
        raise ValueError(f"noise_lambda={noise_lambda} must be >= 0 (the paper uses 0.15)")
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, w in enumerate(leaves):
        w = jnp.asarray(w)
        if w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.floating):
            out.append(w)
            continue
        w32 = w.astype(jnp.float32)
        u = jax.random.uniform(jax.random.fold_in(key, i), w.shape, jnp.float32)
        out.append((w32 + (u - 0.5) * noise_lambda * jnp.std(w32)).astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def noisytune_model(model: nnx.Module, key: jax.Array, *, noise_lambda: float = 0.15) -> None:
    """Apply :func:`noisytune` in place to the ``nnx.Param`` variables of ``model``."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, noisytune(state, key, noise_lambda=noise_lambda))


# --------------------------------------------------------------------------------------- SWA


class SWAState(NamedTuple):
    """State of :func:`swa`.

    Attributes:
      count: int32 number of updates so far.
      n_averaged: int32 number of parameter snapshots in ``mean``.
      mean: float32 running mean of the post-update parameters (the initial parameters
        until the first snapshot).
    """

    count: jax.Array
    n_averaged: jax.Array
    mean: Any


def swa(start: int, every: int = 1) -> optax.GradientTransformation:
    """Stochastic weight averaging as an optax transformation (updates pass unchanged).

    After update number ``count`` (1-based), if ``count > start`` and
    ``(count - start) % every == 0``, the post-update parameters ``params + updates`` are
    added to a running mean: ``mean += (params + updates - mean) / (n_averaged + 1)``.
    Use it as the LAST element of ``optax.chain(...)`` so ``updates`` are the final
    ones; read the average with :func:`swa_params` (and :func:`swa_count`). Jit- and
    vmap-friendly; ``update`` needs ``params``.

    Args:
      start: number of updates before averaging starts (>= 0).
      every: average every ``every`` updates after ``start`` (>= 1).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), swa(start=1))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> swa_params(state)["w"], swa_count(state)
      (Array([-2.5, -2.5], dtype=float32), Array(2, dtype=int32))
    """
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"swa: start={start!r} must be an int >= 0 (updates before averaging)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"swa: every={every!r} must be an int >= 1 (updates between snapshots)")

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        mean = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        return SWAState(count=zero, n_averaged=zero, mean=mean)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "swa needs the current params: call tx.update(grads, state, params) "
                "(nnx.Optimizer and optax.MultiSteps pass them)"
            )
        count = state.count + 1
        take = (count > start) & ((count - start) % every == 0)
        weight = 1.0 / (state.n_averaged + 1).astype(jnp.float32)

        def average(m, p, u):
            new = p.astype(jnp.float32) + u.astype(jnp.float32)
            return jnp.where(take, m + (new - m) * weight, m)

        mean = jax.tree.map(average, state.mean, params, updates)
        n_averaged = state.n_averaged + take.astype(jnp.int32)
        return updates, SWAState(count=count, n_averaged=n_averaged, mean=mean)

    return optax.GradientTransformation(init_fn, update_fn)


def _find_swa_state(tree: Any) -> SWAState | None:
    if isinstance(tree, SWAState):
        return tree
    if isinstance(tree, (tuple, list)):  # optax.chain, NamedTuples (MultiStepsState, ...)
        children = tree
    elif isinstance(tree, Mapping):
        children = tree.values()
    else:
        return None
    for child in children:
        found = _find_swa_state(child)
        if found is not None:
            return found
    return None


def _unwrap(tree: Any) -> Any:
    """Raw arrays in place of nnx Variables (nnx.Optimizer wraps its state in OptState)."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(lambda x: x[...] if is_var(x) else x, tree, is_leaf=is_var)


def swa_params(opt_state: Any) -> Any | None:
    """The SWA mean held by the :class:`SWAState` inside ``opt_state``, or None.

    ``opt_state`` may be any nesting of tuples (``optax.chain``), NamedTuples (e.g.
    ``optax.MultiSteps``' ``inner_opt_state``), lists and mappings, as well as
    ``nnx.Optimizer.opt_state`` (its ``OptState`` variables are unwrapped to arrays).
    Before the first snapshot (see :func:`swa_count`) the mean is the initial params.
    """
    state = _find_swa_state(opt_state)
    return None if state is None else _unwrap(state.mean)


def swa_count(opt_state: Any) -> jax.Array | None:
    """Number of snapshots in the SWA mean inside ``opt_state`` (int32), or None."""
    state = _find_swa_state(opt_state)
    return None if state is None else _unwrap(state.n_averaged)


# -------------------------------------------------------------------------------------- LNSR


def lnsr_penalty(
    head_fn: Callable[[jax.Array, tuple[jax.Array | None, ...]], jax.Array],
    features: jax.Array,
    key: jax.Array,
    *,
    sigma: float = 0.01,
    weights: Sequence[float] = (0.2, 0.1),
    where: jax.Array | None = None,
) -> jax.Array:
    """LNSR: how much Gaussian noise at the input of the last layers moves the logits.

    With ``L = len(weights)``, ``clean = head_fn(features, (None,) * L)`` and, for each
    layer ``l``, ``noisy_l = head_fn(features, noise)`` where ``noise`` holds
    ``eps_l = sigma * jax.random.normal(k_l, features.shape, features.dtype)`` at entry
    ``l`` and None elsewhere, with ``k_0, ..., k_{L-1} = jax.random.split(key, L)``.
    The penalty is ``sum_l weights[l] * mean_valid(sum_classes (noisy_l - clean)**2)``.
    Gradients flow through both the clean and the noisy pass.

    Args:
      head_fn: ``(features, noise) -> logits [B, C]``; ``noise[l]`` is None or an array
        added to the input of the ``l``-th of the model's last layers.
      features: ``[B, ...]`` input of the head.
      key: PRNG key for the noise.
      sigma: noise standard deviation, >= 0.
      weights: one non-negative weight per perturbed layer, at least one.
      where: optional ``[B]`` bool mask of the valid examples.

    Returns:
      The float32 scalar penalty.
    """
    weights = tuple(weights)
    if not weights:
        raise ValueError("lnsr_penalty: weights is empty; pass one weight per perturbed layer")
    if not sigma >= 0:
        raise ValueError(f"lnsr_penalty: sigma={sigma} must be >= 0 (the noise std)")
    n_layers = len(weights)
    features = jnp.asarray(features)
    batch = features.shape[0]
    valid = jnp.ones((batch,), jnp.bool_) if where is None else jnp.asarray(where, jnp.bool_)
    if valid.shape != (batch,):
        raise ValueError(
            f"lnsr_penalty: where has shape {valid.shape}, expected ({batch},) for features "
            f"of shape {features.shape}"
        )
    n = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
    clean = head_fn(features, (None,) * n_layers).astype(jnp.float32)
    keys = jax.random.split(key, n_layers)
    penalty = jnp.float32(0.0)
    for layer, weight in enumerate(weights):
        eps = sigma * jax.random.normal(keys[layer], features.shape, features.dtype)
        noise = tuple(eps if i == layer else None for i in range(n_layers))
        diff = head_fn(features, noise).astype(jnp.float32) - clean
        per_example = jnp.sum(jnp.square(diff).reshape(batch, -1), axis=-1)
        penalty = penalty + weight * jnp.sum(jnp.where(valid, per_example, 0.0)) / n
    return penalty


# -------------------------------------------------------------------------------------- LoRA


class ScaledLoRA(nnx.LoRA):
    """``nnx.LoRA`` with the usual ``alpha / rank`` scaling of the low-rank update.

    ``out = base_module(x) + (alpha / rank) * x @ lora_a @ lora_b``. ``lora_b`` starts
    at zero (as in ``nnx.LoRA``), so wrapping a layer leaves its outputs unchanged.
    ``lora_a`` and ``lora_b`` are ``nnx.LoRAParam`` variables. The low-rank path
    computes in ``dtype``, by default the base module's compute dtype.

    Args:
      in_features: input size.
      lora_rank: rank of the update, >= 1.
      out_features: output size.
      base_module: the wrapped layer (e.g. an ``nnx.Linear``), or None.
      alpha: scale numerator.
      rngs: for the initialisation of ``lora_a``.
      **kwargs: passed on to ``nnx.LoRA`` (``dtype``, ``a_initializer``, ...).
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        base_module: nnx.Module | None = None,
        alpha: float = 16.0,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise ValueError(f"ScaledLoRA: lora_rank={lora_rank!r} must be an int >= 1")
        kwargs.setdefault("dtype", getattr(base_module, "dtype", None))
        super().__init__(
            in_features, lora_rank, out_features, base_module=base_module, rngs=rngs, **kwargs
        )
        self.lora_rank = lora_rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / lora_rank

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        xl, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        delta = (xl @ a @ b) * self.scaling
        if self.base_module is None:
            return delta
        out = self.base_module(x, **kwargs)
        return out + delta.astype(out.dtype)


def add_lora(
    model: nnx.Module,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = ("query", "value"),
    rngs: nnx.Rngs,
) -> int:
    """Wrap, in place, the ``nnx.Linear`` attributes named in ``targets`` in :class:`ScaledLoRA`.

    Every submodule of ``model`` (itself included) whose attribute ``name`` in
    ``targets`` is an ``nnx.Linear`` gets it replaced by ``ScaledLoRA(in, rank, out,
    base_module=<that Linear>, alpha=alpha, rngs=rngs)``. Train the result with
    :func:`lora_trainable` as the optimizer's ``wrt``.

    Args:
      model: the module to change.
      rank: LoRA rank, >= 1.
      alpha: LoRA scale numerator (the update is scaled by ``alpha / rank``).
      targets: attribute names to wrap (BERT's and ViT's attention: query, value).
      rngs: initialises the ``lora_a`` matrices.

    Returns:
      The number of wrapped layers.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"add_lora: rank={rank!r} must be an int >= 1")
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    found = []
    seen = set()
    for _, module in nnx.iter_modules(model):
        for name in targets:
            child = vars(module).get(name)
            if isinstance(child, nnx.Linear) and (id(module), name) not in seen:
                seen.add((id(module), name))
                found.append((module, name, child))
    if not found:
        raise ValueError(
            f"add_lora: no nnx.Linear attribute named any of targets={targets} in "
            f"{type(model).__name__} (already wrapped ones are ScaledLoRA); pass the "
            "attribute names of the layers to adapt"
        )
    for module, name, linear in found:
        lora = ScaledLoRA(linear.in_features, rank, linear.out_features, base_module=linear,
                          alpha=alpha, rngs=rngs)  # fmt: skip
        setattr(module, name, lora)
    return len(found)


def lora_trainable(head: str, *also: str) -> nnx.filterlib.Filter:
    """The nnx filter of what LoRA fine-tuning trains: every ``nnx.LoRAParam`` plus the
    ``nnx.Param`` variables whose path contains ``head`` (the fresh classifier) or one of
    ``also`` (further modules trained in full, PEFT's ``modules_to_save``).

    ``nnx.LoRAParam`` subclasses ``nnx.Param``, so ``nnx.Param`` alone would select
    everything. Use it as ``nnx.Optimizer(..., wrt=...)`` and ``nnx.DiffState``.
    """
    if not isinstance(head, str) or not head:
        raise ValueError(
            f"lora_trainable: head={head!r} must be the attribute name of the classifier "
            "(the model's head_name, e.g. 'classifier' for BERT, 'head' for ViT)"
        )
    for name in also:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"lora_trainable: also={name!r} must be the attribute name of a module to "
                "train in full, e.g. 'pooler' for BERT"
            )
    paths = [nnx.PathContains(name) for name in (head, *also)]
    return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.Any(*paths)))
