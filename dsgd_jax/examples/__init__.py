"""Fine-tuning examples for dsgd_jax (installed with the ``examples`` extra).

The examples share one training loop, :func:`dsgd_jax.examples.train.train_and_evaluate`;
each example contributes a model and its data through a config subclass of
:class:`dsgd_jax.examples.train.TrainConfig`.

- ``python -m dsgd_jax.examples.bert``: a BERT-style encoder (MiniLM-L6 by default)
  on text classification.
- ``python -m dsgd_jax.examples.vit``: a Vision Transformer on imbalanced images
  (``pretrain`` as the first argument pretrains one).

The core package ``dsgd_jax`` never imports this subpackage.
"""
