"""A run's workdir: refusing to overwrite it, resuming only with the run's own settings,
and its metrics log.

:func:`check_workdir` opens a workdir's checkpoints and refuses a start over a run
that exists, or a resume whose settings differ from the run's (:func:`config_changes`,
:class:`SettingsDiffer`); :func:`start_log` truncates the metrics log to the
resumed epoch and writes ``config.json``. One run and vmapped seeds share them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dsgd_jax.examples import checkpoint as ckpt
from dsgd_jax.examples.metrics import MetricsLog

__all__ = ["RESUME_FREE", "SettingsDiffer", "check_workdir", "config_changes", "start_log"]

# Settings a run may change when it resumes: how it is shown, launched and spread
# over devices (checkpoints hold replicated state, so any mesh can resume them).
RESUME_FREE = (
    "resume",
    "stop_after_epochs",
    "progress",
    "log_every",
    "mesh",
    "coordinator_address",
    "num_processes",
    "process_id",
)


def config_changes(
    saved: dict[str, Any], config, free: tuple[str, ...] = RESUME_FREE
) -> dict[str, tuple[Any, Any]]:
    """The settings of ``config`` that differ from a run's saved ``config.json`` content.

    Fields named in ``free`` are not compared. A field the saved run predates counts
    as its default (fields are added with the default that keeps the old behaviour).
    Returns ``{name: (saved value, value now)}``.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changed = {}
    for name, value in config.to_dict().items():
        before = saved.get(name, defaults[name])
        if name not in free and before != value:
            changed[name] = (before, value)
    return changed


class SettingsDiffer(ValueError):
    """A resume whose settings differ from those of the run in the workdir."""

    def __init__(self, workdir: Path, changed: dict[str, tuple[Any, Any]]):
        self.workdir, self.changed = workdir, changed
        super().__init__(
            f"--resume with settings that differ from the run in {workdir} ({self.detail}). "
            "Resume with the same settings, or start a new --workdir."
        )

    @property
    def detail(self) -> str:
        return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(self.changed.items()))


def _check_resume_config(config, workdir: Path, manager=None) -> None:
    """Refuses a resume whose settings differ from the run's own: those of its
    ``config.json``, or, where that file is gone, those recorded with its newest
    checkpoint; refuses one whose settings cannot be found at all."""
    path = workdir / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(
                f"{path} is damaged ({e}); restore it, or start a new --workdir."
            ) from None
    else:
        saved = ckpt.saved_config(manager) if manager is not None else None
        if saved is None:
            if manager is None or manager.latest_step() is None:
                return  # nothing trained yet: a fresh start
            raise ValueError(
                f"{workdir} holds checkpoints but no config.json and no settings recorded "
                "with them, so a resume cannot check its settings; restore config.json or "
                "start a new --workdir."
            )
    changed = config_changes(saved, config)
    if changed:
        raise SettingsDiffer(workdir, changed)


def check_workdir(config, workdir: Path):
    """Opens the checkpoint manager of ``workdir`` (or None) and the epoch to resume from.

    Refuses a workdir holding checkpoints unless ``config.resume``, and a resume
    with changed settings.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    manager = ckpt.open_manager(workdir / "checkpoints") if config.save_checkpoints else None
    last_saved = manager.latest_step() if manager is not None else None
    if last_saved is not None and not config.resume:
        manager.close()
        raise FileExistsError(
            f"{workdir} already holds checkpoints up to epoch {last_saved}. Pass --resume "
            "to continue that run, or choose a new --workdir."
        )
    if config.resume:
        try:
            _check_resume_config(config, workdir, manager)
        except ValueError:
            if manager is not None:
                manager.close()
            raise
    return manager, (last_saved if config.resume else None)


def start_log(workdir: Path, config, resumed_from: int | None) -> MetricsLog:
    """The metrics log, truncated to the resumed epoch (or emptied), and config.json."""
    log = MetricsLog(workdir / "metrics.jsonl")
    if resumed_from is not None:
        log.truncate_after(resumed_from)
    else:
        log.path.unlink(missing_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return log
