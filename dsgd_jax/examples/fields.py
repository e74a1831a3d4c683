"""Declaring config fields: the help text of their flags, their choices, new defaults.

The examples' configs (:class:`~dsgd_jax.examples.train.TrainConfig`, the methods'
own settings in :mod:`dsgd_jax.examples.methods`, the examples' subclasses) are
dataclasses whose fields are their command-line flags (:mod:`dsgd_jax.examples.cli`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

__all__ = ["choices_of", "config_field", "override_default"]


def config_field(default, help_text: str):
    """A dataclass field with the help text its command-line flag shows.

    A field with a fixed set of values is typed ``Literal[...]``: the command line
    offers those values and :meth:`TrainConfig.validate` checks them.
    """
    return dataclasses.field(default=default, metadata={"help": help_text})


def choices_of(config_cls: type, name: str) -> tuple | None:
    """The values field ``name`` may take: its ``Literal`` type's, or None if any."""
    kind = typing.get_type_hints(config_cls)[name]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def override_default(base: type, name: str, default):
    """Field ``name`` of the config class ``base`` with another default, same help."""
    (field,) = (f for f in dataclasses.fields(base) if f.name == name)
    return dataclasses.field(default=default, metadata=field.metadata)
