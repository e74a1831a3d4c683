"""Prepared tensorflow-datasets data, opened without TensorFlow and never downloaded.

Both examples read tfds data through ``tfds.data_source`` (random access to
``array_record`` files). :func:`import_tfds` checks the reader's packages and
:func:`open_splits` turns tfds' errors for missing data into one clear
FileNotFoundError that says how to prepare the data where a network is available.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

__all__ = ["PIP", "import_tfds", "open_splits"]

PIP = 'pip install "dsgd-jax[tfds]"'


def import_tfds():
    """``tensorflow_datasets``, or ImportError naming the missing reader package."""
    for module in ("tensorflow_datasets", "array_record", "importlib_resources"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"Reading tfds data needs the package {module!r}: run `{PIP}`.")
    import tensorflow_datasets as tfds

    return tfds


def open_splits(tfds, name: str, splits: Sequence[str], data_dir=None) -> list:
    """One ``tfds.data_source`` per split of ``name``; missing data fails at once."""
    splits = list(splits)
    try:
        return tfds.data_source(name, split=splits, data_dir=data_dir, download=False)
    except (NotImplementedError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        where = data_dir or "tfds' default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise FileNotFoundError(
            f"No prepared {name} data (splits {splits}) in {where}; tfds data is never "
            f"downloaded at run time. Where a network is available run `tfds build {name} "
            f"--file_format=array_record --data_dir=DIR` and pass data_dir=DIR. "
            f"(tfds said: {e})"
        ) from e
