"""The training methods of the examples, one module each, registered in :data:`METHODS`.

====================  ==============================================================
``fft``               plain fine-tuning (:mod:`.fft`)
``dsgd``              DSGD: correct examples weigh lambda(t) (:mod:`.dsgd`)
``focal``             a focal loss in place of cross-entropy (:mod:`.focal`)
``pcgrad``            PCGrad on the wrong and correct examples (:mod:`.pcgrad`)
``noisytune``         weights perturbed once before training (:mod:`.noisytune`)
``lnsr``              a noise-stability penalty on the head (:mod:`.lnsr`)
``swa``               evaluation with averaged parameters (:mod:`.swa`)
``lora``              low-rank adapters on attention query/value (:mod:`.lora`)
====================  ==============================================================

The loop (:mod:`dsgd_jax.examples.train`) calls the hooks of
``METHODS[config.method]`` (a :class:`~.base.Method`) and has no method of its own.

**Adding a method.** Write a module with a :class:`~.base.Method` subclass that
overrides the hooks the method changes, and add its instance to :data:`METHODS`
(or, from outside the package, pass it to :func:`register`). The method's own settings are a small
dataclass, its ``config``; the examples' configs inherit the ``config`` of every
method in :data:`METHODS` (so ``--focal_alpha`` is a flag of every example), and a
method registered from outside adds its settings to an example's config by
inheritance. Label smoothing, for instance, changes only the per-example loss:

>>> import dataclasses, jax, optax
>>> from dsgd_jax.examples import methods
>>> from dsgd_jax.examples.fields import config_field
>>> @dataclasses.dataclass
... class SmoothConfig:
...     smooth_eps: float = config_field(0.1, "smooth: label smoothing epsilon")
>>> class LabelSmoothing(methods.Method):
...     name = "smooth"
...     config = SmoothConfig
...     def per_example_loss(self, config):
...         def loss(logits, labels):
...             onehot = jax.nn.one_hot(labels, logits.shape[-1])
...             targets = optax.smooth_labels(onehot, config.smooth_eps)
...             return optax.softmax_cross_entropy(logits, targets)
...         return loss
>>> methods.register(LabelSmoothing())
>>> from dsgd_jax.examples.bert.config import BertExampleConfig
>>> @dataclasses.dataclass
... class SmoothBertConfig(BertExampleConfig, SmoothConfig):  # --smooth_eps too
...     pass
>>> config = SmoothBertConfig(method="smooth", smooth_eps=0.2)
>>> config.validate()
>>> config.smooth_eps
0.2
>>> del methods.METHODS["smooth"]

``tests/examples/test_methods.py`` trains it in the loop and from the command line
(``--method=smooth --smooth_eps=0.3``).
"""

from __future__ import annotations

from dsgd_jax.examples.methods.base import Method
from dsgd_jax.examples.methods.dsgd import DSGD
from dsgd_jax.examples.methods.fft import FFT
from dsgd_jax.examples.methods.focal import Focal
from dsgd_jax.examples.methods.lnsr import LNSR
from dsgd_jax.examples.methods.lora import LoRA
from dsgd_jax.examples.methods.noisytune import NoisyTune
from dsgd_jax.examples.methods.pcgrad import PCGrad
from dsgd_jax.examples.methods.swa import SWA

__all__ = ["METHODS", "Method", "get", "register"]

METHODS: dict[str, Method] = {
    m.name: m for m in (FFT(), DSGD(), Focal(), PCGrad(), NoisyTune(), LNSR(), SWA(), LoRA())
}
"""Every method by name, in the order the docs and ``--methods=baselines`` list them."""


def register(method: Method) -> None:
    """Adds ``method`` to :data:`METHODS` (under ``method.name``, which must be new)."""
    if not isinstance(method, Method) or not getattr(method, "name", ""):
        raise TypeError("register() takes a Method instance with a name, e.g. MyMethod().")
    if method.name in METHODS:
        raise ValueError(f"A method named {method.name!r} is registered already; pick another.")
    METHODS[method.name] = method


def get(name: str) -> Method:
    """The method named ``name``; ValueError listing the registered ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method={name!r} is unknown; choose one of {tuple(METHODS)}.") from None
