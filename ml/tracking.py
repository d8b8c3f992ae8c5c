"""Experiment tracking: a small protocol, a W&B implementation and a no-op one.

W&B runs online when an API key is configured (``WANDB_API_KEY`` or ``wandb login``),
offline otherwise (a local run under ``<dir>/wandb/`` that ``wandb sync`` uploads later),
and not at all when disabled. Tracking never fails a training run: every call that goes
wrong logs a warning and the run carries on.
"""

from __future__ import annotations

import functools
import logging
import math
import netrc
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from ml.config import TrackingSettings

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    link: str | None

    def log_trials(self, rows: list[dict[str, Any]]) -> None: ...
    def log_config(self, values: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, Any]) -> None: ...
    def log_images(self, images: dict[str, Path]) -> None: ...
    def log_model(self, folder: Path, name: str) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NoopTracker:
    """Same interface, does nothing: tracking disabled."""

    link: str | None = None

    def log_trials(self, rows): ...
    def log_config(self, values): ...
    def log_metrics(self, metrics): ...
    def log_images(self, images): ...
    def log_model(self, folder, name): ...
    def finish(self, exit_code=0): ...


def _never_raises(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # tracking must never fail training
            logger.warning("W&B %s failed, continuing without it: %s", method.__name__, err)
            return None

    return wrapper


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(settings: TrackingSettings) -> str:
    if settings.mode == "auto":
        return "online" if has_api_key() else "offline"
    return settings.mode


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | str]:
    """Nested metrics as 'a/b/c' keys with scalar values (lists are left out)."""
    flat: dict[str, float | str] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            flat[name] = value
        elif isinstance(value, str):
            flat[name] = value
    return flat


def _sync_path(path: Path) -> str:
    """Relative to the working directory when inside it (a copied project folder still
    finds it), else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


class WandbTracker:
    """One W&B run. Construct through :func:`start`."""

    def __init__(self, run, mode: str):
        self.run = run
        # Offline runs have no URL yet: point at the local run folder for `wandb sync`.
        self.link = run.url if mode == "online" else str(Path(run.dir).parent.resolve())

    @_never_raises
    def log_trials(self, rows):
        for row in rows:
            self.run.log({f"trial/{k}": v for k, v in row.items() if v is not None})

    @_never_raises
    def log_config(self, values):
        self.run.config.update(values, allow_val_change=True)

    @_never_raises
    def log_metrics(self, metrics):
        self.run.summary.update(flatten(metrics))

    @_never_raises
    def log_images(self, images):
        import wandb

        self.run.log({f"plots/{name}": wandb.Image(str(path)) for name, path in images.items()})

    @_never_raises
    def log_model(self, folder, name):
        """The bundle as a model artifact whose files live *inside* the run folder.

        W&B stages an artifact's files under ~/.local/share/wandb, outside ``wandb/``: a
        ``wandb/`` folder copied to another machine would sync without its model. So the
        files are copied into ``<run folder>/artifacts/<name>/`` and added by reference
        (policy "immutable": no staging copy), with paths relative to the working
        directory, the folder `wandb sync wandb/offline-run-*` is run from.
        """
        import wandb

        target = Path(self.run.dir).parent / "artifacts" / name
        shutil.copytree(folder, target, dirs_exist_ok=True)
        artifact = wandb.Artifact(name=name, type="model")
        for path in sorted(p for p in target.rglob("*") if p.is_file()):
            artifact.add_file(_sync_path(path), name=path.relative_to(target).as_posix(), policy="immutable")
        self.run.log_artifact(artifact)

    @_never_raises
    def finish(self, exit_code=0):
        self.run.finish(exit_code=exit_code)


def start(settings: TrackingSettings, config: dict[str, Any], name: str, job_type: str = "train",
          mode: str | None = None, group: str | None = None, tags: list[str] | tuple[str, ...] = ()) -> Tracker:
    """Open a run (or a no-op tracker). Failure to start W&B warns and returns the no-op.

    ``group`` (the model name) puts a model's train, retrain and demo runs together on the
    W&B page; ``tags`` make them filterable (model, strategy, job type)."""
    mode = mode or resolve_mode(settings)
    if mode == "disabled":
        return NoopTracker()
    try:
        import wandb

        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=settings.project, entity=settings.entity, dir=settings.dir, mode=mode,
            config=config, name=name, job_type=job_type, group=group, tags=[str(t)[:64] for t in tags],
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        tracker = WandbTracker(run, mode)
        logger.info("W&B %s run: %s", mode, tracker.link)
        return tracker
    except Exception as err:
        logger.warning("Could not start W&B (%s mode), training without tracking: %s", mode, err)
        return NoopTracker()
