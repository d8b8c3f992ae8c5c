"""Load the production model for a strategy: verified, matched to the running features.

``ProductionModel.load(store, name, engineer)`` refuses, with a message naming the file or
the difference, when: there is no production version, any file's sha256 differs from the
registry, a path leaves the store, or the model's feature set differs from the
FeatureEngineer the strategy runs. ``changed()`` is a cheap stat() of registry.json for
hot reload; nothing is hashed until a reload is actually needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.bundle import Bundle, load_bundle
from ml.features import FeatureEngineer
from ml.registry import (
    IntegrityError,
    Registry,
    RegistryError,
    calibrator_file,
    guard_end,
    open_registry,
)
from ml.smoke import smoke_test


class FeatureMismatch(RegistryError):
    """The model was trained on other features than the strategy computes."""


def stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def describe_mismatch(entry: dict[str, Any], engineer: FeatureEngineer) -> str:
    """What differs between a registry entry's feature set and the running engineer's."""
    trained, running = entry.get("feature_names") or [], engineer.feature_names
    parts = []
    if entry.get("timeframe") != engineer.timeframe:
        parts.append(f"timeframe {entry.get('timeframe')} vs {engineer.timeframe}")
    missing = [n for n in trained if n not in running]
    extra = [n for n in running if n not in trained]
    if missing:
        parts.append(f"the strategy lacks {len(missing)} trained features ({', '.join(missing[:5])}"
                     f"{', ...' if len(missing) > 5 else ''})")
    if extra:
        parts.append(f"the strategy adds {len(extra)} ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
    settings = entry.get("features") or {}
    for key in ("groups", "periods", "higher_timeframes"):
        if key in settings and sorted(map(str, settings[key])) != sorted(map(str, getattr(engineer.settings, key))):
            parts.append(f"features.{key} {settings[key]} vs {getattr(engineer.settings, key)}")
    if not parts:
        parts.append("same names and settings, different feature code version: retrain the model")
    return "; ".join(parts)


def parse_train_end(value: Any) -> pd.Timestamp | None:
    """A timezone-aware timestamp, or None: a missing or naive train_end must never turn into
    NaT, against which every comparison is False and the in-sample guard blocks nothing."""
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    return ts if ts is not pd.NaT and ts.tzinfo is not None else None


@dataclass
class ProductionModel:
    name: str
    version: int
    entry: dict[str, Any]
    bundle: Bundle
    registry: Registry
    stat_key: tuple[int, int] | None

    @classmethod
    def load(cls, store: str | Path | Registry, name: str, engineer: FeatureEngineer | None = None,
             version: int | None = None, revision: int | None = None, runtime: str = "native") -> ProductionModel:
        """The production version, verified; or, for a walk-forward backtest, ``version`` at
        calibration ``revision`` (None: its trained calibrator) as it was at some moment.
        ``runtime="onnx"`` serves its ``model.onnx`` (verified like every file) instead."""
        registry = open_registry(store)
        key = stat_key(registry.index)
        doc = registry.read()
        disabled = doc["models"].get(name, {}).get("disabled")
        if disabled:
            raise RegistryError(f"{name} is disabled by the operator ({disabled.get('reason')}, {disabled.get('time')}): "
                                f"no entries. `ftml registry enable {name}` lifts it.")
        if version is not None:
            entry = {**registry.version(name, version, doc), "calibration_revision": revision}
        else:
            entry = registry.production(name, doc) if name in doc["models"] else None
        if entry is None:
            raise RegistryError(f"No production model '{name}' in {registry.root}: run `ftml registry list`, "
                                f"or `ftml train` then `ftml registry promote {name} <version>`.")
        problems = registry.verify_version(entry)
        if problems:
            raise IntegrityError(f"Refusing {name} v{entry['id']}: " + "; ".join(problems))
        if engineer is not None and entry.get("feature_set_id") != engineer.feature_set_id:
            raise FeatureMismatch(
                f"Refusing {name} v{entry['id']}: trained on feature set {entry.get('feature_set_id')}, the "
                f"strategy computes {engineer.feature_set_id}: {describe_mismatch(entry, engineer)}"
            )
        train_end = parse_train_end(guard_end(entry))
        if train_end is None:
            raise IntegrityError(f"Refusing {name} v{entry['id']}: train_end {entry.get('train_end')!r} is not a "
                                 "timezone-aware date, so the in-sample guard could not work; re-register the model.")
        why = smoke_test(registry.version_dir(entry), entry["files"], registry.root)
        if why:
            raise IntegrityError(f"Refusing {name} v{entry['id']}: {why}")
        bundle = load_bundle(registry.version_dir(entry), calibrator_file(entry), runtime)
        if bundle.feature_set_id != entry.get("feature_set_id"):
            raise IntegrityError(f"Refusing {name} v{entry['id']}: bundle.json and registry.json disagree "
                                 "on the feature set")
        return cls(name, int(entry["id"]), entry, bundle, registry, key)

    # ------------------------------------------------------------------ use
    @property
    def feature_names(self) -> list[str]:
        return self.bundle.feature_names

    @property
    def label(self) -> dict[str, Any]:
        """The label settings the model was trained with (``min_profit``)."""
        return dict(self.entry["label"])

    @cached_property
    def train_end(self) -> pd.Timestamp:
        """The newest candle the model or its active calibrator was fitted on (checked at load):
        a recalibration revision moves it to the end of its fit window."""
        return parse_train_end(guard_end(self.entry))

    @property
    def revision(self) -> int | None:
        """The active calibration revision (None: the calibrator the model was trained with)."""
        return self.entry.get("calibration_revision") or None

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated P(win) for every row of a frame that holds the feature columns.

        NaN features are handled as in training (the model's own missing-value rule); rows
        where every feature is NaN get NaN (no entry there), never a guess.
        """
        X = features[self.feature_names].to_numpy(dtype=np.float64)
        p = np.full(len(X), np.nan)
        ok = ~np.isnan(X).all(axis=1)
        if ok.any():
            p[ok] = self.bundle.predict_proba(X[ok])
        return p

    def changed(self) -> bool:
        """True when registry.json was rewritten since this model was loaded (a stat, no hashing)."""
        return stat_key(self.registry.index) != self.stat_key

    def production_id(self) -> int | None:
        """The production version id now in the registry (reads the small JSON only)."""
        try:
            return self.registry.read()["models"].get(self.name, {}).get("production")
        except RegistryError:
            return self.version  # unreadable right now: assume unchanged, check again next candle

    def production_moved(self) -> bool:
        """After ``changed()``: is another version (or none) production now?"""
        return self.production_id() != self.version
