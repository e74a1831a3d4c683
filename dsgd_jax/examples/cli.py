"""Command line of the examples: one flag per config field, then the shared loop.

``--help`` lists every field of the example's config with its default, so the
flags of ``python -m dsgd_jax.examples.bert`` and of any later example follow
from their config classes and stay in step with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsgd_jax.examples import distributed, interrupt
from dsgd_jax.examples.metrics import format_summary
from dsgd_jax.examples.train import TrainConfig, train_and_evaluate

__all__ = ["field_value", "main", "parse_config"]


def build_parser(config_cls: type[TrainConfig], prog: str, description: str):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where metrics, checkpoints and the summary go; None means "
        "runs/<task>-<method>-s<seed> (pretraining: runs/vit-pretrain-<dataset>-<model>)",
    )
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        kwargs = {"default": field.default, "help": field.metadata.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(f"--{field.name}", **kwargs)
    return parser


def field_value(config_cls: type[TrainConfig], name: str, text: str, where: str) -> Any:
    """``text`` as the value of field ``name``, converted and checked as its command-line
    flag does (type, choices; ``true``/``false`` for a switch); ValueError naming ``where``."""
    parser = build_parser(config_cls, where, "")
    parser.exit_on_error = False
    kind = typing.get_type_hints(config_cls)[name]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{where!r}: {text!r} is not a valid bool (true or false).")
        argv = [f"--{name}" if text.lower() in ("true", "1") else f"--no-{name}"]
    else:
        argv = [f"--{name}={text}"]
    try:
        return getattr(parser.parse_args(argv), name)
    except argparse.ArgumentError as e:
        raise ValueError(f"{where!r}: {e.message}.") from None


def parse_config(
    config_cls: type[TrainConfig], argv: Sequence[str] | None, prog: str, description: str
) -> tuple[TrainConfig, Path]:
    """The config and the workdir that the command line ``argv`` asks for."""
    args = vars(build_parser(config_cls, prog, description).parse_args(argv))
    workdir = args.pop("workdir")
    config = config_cls(**args)
    return config, Path(workdir) if workdir is not None else config.default_workdir()


USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError, ImportError)


def guarded(prog: str, body: Callable[[], int], *, on_interrupt: str) -> int:
    """Runs a command's ``body``: Ctrl-C stops it at the next step boundary (one line,
    status 130, ``on_interrupt`` says how to continue), a user error prints one line
    (status 2; ``DSGD_TRACEBACK=1`` re-raises it for the traceback)."""
    try:
        with interrupt.stop_at_step_boundary():
            return body()
    except (interrupt.Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted. {on_interrupt}", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("DSGD_TRACEBACK"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        hint = "(set DSGD_TRACEBACK=1 for the traceback)"
        print(f"{prog}: error: {message}\n{hint}", file=sys.stderr)
        return 2


def main(
    config_cls: type[TrainConfig],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
) -> int:
    """Parses ``argv``, trains, prints the summary; returns the exit status."""
    config, workdir = parse_config(config_cls, argv, prog, description)

    def body() -> int:
        config.validate()
        distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
        summary = train_and_evaluate(config, workdir)
        if not distributed.is_primary():
            return 0
        print(format_summary(summary))
        if not summary["finished"]:
            print(
                f"Stopped after epoch {summary['epochs']} of {config.num_epochs}; "
                "continue with --resume."
            )
        print(f"metrics: {workdir / 'metrics.jsonl'}   summary: {workdir / 'summary.json'}")
        return 0

    return guarded(
        prog,
        body,
        on_interrupt=f"Checkpoints of finished epochs are in {workdir}/checkpoints; run the "
        "same command with --resume to continue.",
    )
