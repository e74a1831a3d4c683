"""Optimizers of the fine-tuning literature that optax does not ship.

The original BERT optimizer ("BERTAdam", Devlin et al. 2019; the
``BertAdam`` of ``pytorch-pretrained-bert``) is Adam with decoupled weight decay
and *without* bias correction. Mosbach et al. (2021) name the missing bias
correction as one cause of failed BERT fine-tuning runs: in the first updates
the second moment ``nu`` is still small, so each step is up to
``(1 - b1) / sqrt(1 - b2)`` (about 3.2 for the defaults) times larger than
bias-corrected Adam's. The examples' ``--optimizer=bertadam`` selects it; the
default stays ``optax.adamw``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

__all__ = ["ScaleByAdamNoBiasCorrectionState", "bert_adam", "scale_by_adam_no_bias_correction"]


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    """State of :func:`scale_by_adam_no_bias_correction`.

    Attributes:
      count: the number of updates applied so far (int32).
      mu: the exponential moving average of the gradients.
      nu: the exponential moving average of the squared gradients.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    r"""Rescales updates by Adam's moments, without bias correction.

    With gradient :math:`g_t`,

    .. math::
      m_t = b_1 m_{t-1} + (1 - b_1) g_t, \quad
      v_t = b_2 v_{t-1} + (1 - b_2) g_t^2, \quad
      u_t = m_t / (\sqrt{v_t} + \epsilon),

    where ``optax.scale_by_adam`` divides :math:`m_t` by :math:`1 - b_1^t` and
    :math:`v_t` by :math:`1 - b_2^t` first.

    Args:
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment (BERT's default, 1e-6).

    Returns:
      A :class:`optax.GradientTransformation`.

    Examples:
      The first update of a gradient g is (1 - b1) g / (sqrt(1 - b2) |g| + eps),
      about 3.16 in size where bias-corrected Adam's is 1:

      >>> import jax.numpy as jnp
      >>> tx = scale_by_adam_no_bias_correction()
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, state = tx.update({"w": jnp.array([2.0, -0.5])}, tx.init(params))
      >>> [round(float(u), 3) for u in updates["w"]], int(state.count)
      ([3.162, -3.162], 1)

    References:
      Devlin et al., `BERT: Pre-training of Deep Bidirectional Transformers for
      Language Understanding <https://arxiv.org/abs/1810.04805>`_, 2019.
      Mosbach et al., `On the Stability of Fine-tuning BERT
      <https://arxiv.org/abs/2006.04884>`_, 2021.
    """
    for name, value in (("b1", b1), ("b2", b2)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}.")

    def init_fn(params):
        return ScaleByAdamNoBiasCorrectionState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        count = numerics.safe_increment(state.count)
        return updates, ScaleByAdamNoBiasCorrectionState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def bert_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    r"""BERT's original optimizer: AdamW without bias correction.

    The same chain as ``optax.adamw`` (scale by the moments, add
    ``weight_decay * params`` where ``mask`` allows, scale by
    ``-learning_rate``), with :func:`scale_by_adam_no_bias_correction` in place
    of ``optax.scale_by_adam``.

    Args:
      learning_rate: a fixed rate or a schedule of the update count.
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the root of the second moment.
      weight_decay: decoupled weight decay.
      mask: a pytree of bools (or a function of the params giving one) that says
        which parameters decay, as in ``optax.adamw``.

    Returns:
      A :class:`optax.GradientTransformation`.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = bert_adam(1e-3, weight_decay=0.0)
      >>> params = {"w": jnp.ones(2)}
      >>> updates, _ = tx.update({"w": jnp.array([2.0, -0.5])}, tx.init(params), params)
      >>> [round(float(u), 5) for u in updates["w"]]
      [-0.00316, 0.00316]
    """
    return optax.chain(
        scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
