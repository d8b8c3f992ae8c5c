"""Optuna storage behind a URL: credentials kept out of files, drivers named, time-outs set.

* ``redact(url)``: the URL with its password replaced, for everything that is written down
  (bundle.json, registry.json, W&B, logs). The real URL stays in memory only.
* ``open_storage(url)``: SQLite as before; PostgreSQL / MySQL through SQLAlchemy with a
  connect time-out, so an unreachable or silent server ends in one line instead of a hang
  that would hold the retrain lock for ever. A missing driver names the extra to install.
* ``create_or_join(storage, name, make_sampler, pruner)``: race-safe study creation. Two
  processes starting together on a fresh database both try to create the tables and the
  study; the loser gets a unique-key violation, which is retried as a join.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import optuna

from ml.errors import FtmlError
from ml.redact import redact_urls

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10
CREATE_ATTEMPTS = 6
DRIVERS = {"postgresql": ("psycopg2", "postgres"), "postgresql+psycopg2": ("psycopg2", "postgres"),
           "postgresql+psycopg": ("psycopg", "postgres"), "mysql": ("MySQLdb", None),
           "mysql+pymysql": ("pymysql", None)}


class StorageError(FtmlError):
    """The Optuna storage cannot be used; the message says why and what to do."""


def redact(url: str | None) -> str | None:
    """``url`` with any password replaced by ***."""
    return redact_urls(url)


def redacted_settings(ml: dict) -> dict:
    """An ``MLConfig.model_dump()`` safe to write down (tracking config, logs)."""
    training = dict(ml.get("training", {}))
    training["storage"] = redact(training.get("storage"))
    return {**ml, "training": training}


def _check_driver(url: str) -> None:
    scheme = url.split("://", 1)[0].lower()
    module, extra = DRIVERS.get(scheme, (None, None))
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        hint = f"pip install 'freqtrade-ml[{extra}]'" if extra else f"pip install {module}"
        raise StorageError(f"Storage {redact(url)} needs the Python driver '{module}', which is not installed: "
                           f"{hint}") from None


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """A storage object for ``url`` (sqlite URLs are passed through as Optuna takes them)."""
    if url.startswith("sqlite"):
        return url
    _check_driver(url)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True})
        except Exception as err:  # SQLAlchemy's errors: no such host, refused, time-out, auth, races
            text = str(err)
            # Two processes creating the tables of a fresh database at once: the loser's
            # unique-key violation is a race, not a fault; the tables exist on the retry.
            if ("UniqueViolation" in text or "already exists" in text) and attempt < CREATE_ATTEMPTS - 1:
                time.sleep(0.3 * (attempt + 1))
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            raise StorageError(f"Cannot use the Optuna storage {redact(url)}: {first[:300]}. Check the host, port, "
                               "database and credentials, or use the default SQLite storage.") from None
    raise AssertionError("unreachable")


def create_or_join(storage: optuna.storages.BaseStorage | str, name: str,
                   make_sampler: Callable[[bool], optuna.samplers.BaseSampler],
                   pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, bool]:
    """Create the study, or join it if it exists. Returns (study, created).

    ``make_sampler(created)`` lets the caller seed a joining process differently from the
    creator: two processes with the same TPE seed on one study propose the same points.
    """
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                       sampler=make_sampler(True), pruner=pruner), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(storage=storage, study_name=name, sampler=make_sampler(False), pruner=pruner), False
        except Exception as err:  # a creation race on a fresh database (UniqueViolation, ...)
            if attempt == CREATE_ATTEMPTS - 1 or "sqlalchemy" not in type(err).__module__:
                raise
            logger.info("Study %s: creation raced with another process (%s); joining.", name, type(err).__name__)
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")
