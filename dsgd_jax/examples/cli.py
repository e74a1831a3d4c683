"""Command line of the examples and the benchmark scripts, on `tyro`_.

Every command parses its flags with :func:`parse`: one flag per field of a
dataclass, named as the field (``--learning_rate``, ``--no-progress`` for a
switch), with the field's type (``Literal`` for a choice) and its help text
(``config_field``'s). ``--help`` lists every field with its default, so the flags
of ``python -m dsgd_jax.examples.bert`` and of the benchmark scripts follow from
their dataclasses and stay in step with them. A bad flag stops the command with
status 2 and one line, ``prog: error: ...``, naming the flag and what it takes.

.. _tyro: https://brentyi.github.io/tyro/
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro

from dsgd_jax.examples import distributed, interrupt
from dsgd_jax.examples.metrics import format_summary
from dsgd_jax.examples.train import TrainConfig, train_and_evaluate

__all__ = ["UsageError", "field_value", "guarded", "main", "parse", "parse_config"]

T = TypeVar("T")


class UsageError(ValueError):
    """A flag that the command line refuses; the message names the flag and the fix."""


def _flag(argument: Any) -> str:
    try:
        return argument.lowered.name_or_flags[0]
    except (AttributeError, IndexError, TypeError):
        return "a flag"


def _one_line(event: Any) -> None:
    """tyro's parse-error hook: raises :class:`UsageError` with one line for the
    failures a user meets (an unknown flag, a bad value, a value outside the
    choices); any other failure falls through to tyro's own message."""
    from tyro import _errors as errors

    if isinstance(event, errors.InvalidChoice):
        raise UsageError(
            f"{_flag(event.argument)}={event.value!r} is not one of {', '.join(event.choices)}."
        )
    if isinstance(event, errors.InstantiationFailure):
        where = _flag(event.argument) if event.argument is not None else "the flags"
        raise UsageError(f"{where}: {event.message}.")
    if isinstance(event, errors.BadValue):
        raise UsageError(
            f"{_flag(event.argument)} takes no value here; give it as "
            f"{_flag(event.argument)} alone, or see --help."
        )
    if isinstance(event, errors.MissingArgs):
        names = ", ".join(_flag(a.arg) for a in event.missing_arguments)
        raise UsageError(f"{names} is required; see --help.")
    if isinstance(event, errors.UnrecognizedArgs):
        raise UsageError(f"unrecognized {' '.join(event.tokens)}; see --help for the flags.")


def _hook():
    try:  # private in tyro 1.0 (pinned <1.1): without it, tyro's own boxed messages
        from tyro import _errors
    except ImportError:
        return contextlib.nullcontext()
    return _errors.on_parse_error(_one_line)


def _tyro(cls, argv, prog, description, default, known_only):
    with _hook():
        return tyro.cli(
            cls,
            args=list(argv),
            prog=prog,
            description=description,
            default=default,
            use_underscores=True,
            return_unknown_args=known_only,
        )


def parse(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str | None = None,
    default: T | None = None,
    known_only: bool = False,
    exit_on_error: bool = True,
) -> Any:
    """The dataclass ``cls`` that the flags ``argv`` ask for (``sys.argv[1:]`` if None).

    ``default`` gives the values of the flags not given (the fields' defaults if
    None); ``known_only=True`` returns ``(instance, other_flags)`` and leaves the
    flags that ``cls`` has no field for to the caller. A bad flag prints
    ``prog: error: ...`` and exits with status 2, or, with ``exit_on_error=False``,
    raises :class:`UsageError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _tyro(cls, argv, prog, description, default, known_only)
    except UsageError as e:
        if not exit_on_error:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def field_value(config_cls: type[TrainConfig], name: str, text: str, where: str) -> Any:
    """``text`` as the value of field ``name``, converted and checked as its command-line
    flag does (type, choices; ``true``/``false`` for a switch); ValueError naming ``where``."""
    kind = typing.get_type_hints(config_cls)[name]
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{where!r}: {text!r} is not a valid bool (true or false).")
        argv = [f"--{name}" if text.lower() in ("true", "1") else f"--no-{name}"]
    else:
        argv = [f"--{name}={text}"]
    try:
        return getattr(parse(config_cls, argv, prog=where, exit_on_error=False), name)
    except UsageError as e:
        raise ValueError(f"{where!r}: {e}") from None


def parse_config(
    config_cls: type[TrainConfig], argv: Sequence[str] | None, prog: str, description: str
) -> tuple[TrainConfig, Path]:
    """The config and the workdir that the command line ``argv`` asks for."""
    command = dataclasses.make_dataclass(
        config_cls.__name__ + "Command",
        [
            (
                "workdir",
                str | None,
                dataclasses.field(
                    default=None,
                    metadata={
                        "help": "where metrics, checkpoints and the summary go; None means "
                        "runs/<task>-<method>-s<seed> (pretraining: "
                        "runs/vit-pretrain-<dataset>-<model>)"
                    },
                ),
            ),
            (
                "config",
                Annotated[config_cls, tyro.conf.arg(name="")],
                dataclasses.field(default_factory=config_cls),
            ),
        ],
    )
    parsed = parse(command, argv, prog=prog, description=description)
    config = parsed.config
    workdir = parsed.workdir
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
