"""A walk-forward schedule for the gate: which model version (and calibration revision) was
in production at each moment, so one backtest over years scores every candle with the model
the cron job would have been running then (``ml.gate.walkforward``, written by
``ftml walkforward``; see docs/ARCHITECTURE.md, "Walk-forward").

The file (``schedule.json``)::

    {"format": 1, "registry": "/abs/registry", "model": "MyStrategy",
     "segments": [{"step": 0, "from": "2025-01-01T00:00:00+00:00", "to": "2025-01-31T00:00:00+00:00",
                   "version": 1, "revision": null}, ...]}

A candle dated in ``[from, to)`` is scored by that segment's version; ``version: null`` (no
model yet, or none promoted) and candles outside every segment get no entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.predictor import ProductionModel

FORMAT = 1


class ScheduleError(FtmlError):
    """The walk-forward schedule cannot be used; the message says why."""


@dataclass
class Segment:
    start: pd.Timestamp
    end: pd.Timestamp
    model: ProductionModel | None


class Schedule:
    def __init__(self, segments: list[Segment]):
        self.segments = sorted(segments, key=lambda s: s.start)

    @classmethod
    def load(cls, path: str | Path, engineer: FeatureEngineer) -> Schedule:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ScheduleError(f"walk-forward schedule {path} cannot be read: {err}") from None
        if doc.get("format") != FORMAT:
            raise ScheduleError(f"walk-forward schedule {path}: format {doc.get('format')!r}, expected {FORMAT}; "
                                "rerun `ftml walkforward`")
        loaded: dict[tuple[int, int | None], ProductionModel] = {}
        segments = []
        for seg in doc["segments"]:
            model = None
            if seg.get("version") is not None:
                key = (int(seg["version"]), seg.get("revision"))
                if key not in loaded:
                    loaded[key] = ProductionModel.load(doc["registry"], doc["model"], engineer, *key)
                model = loaded[key]
            segments.append(Segment(pd.Timestamp(seg["from"]), pd.Timestamp(seg["to"]), model))
        return cls(segments)

    def parts(self, dates: pd.Series) -> list[tuple[np.ndarray, ProductionModel | None]]:
        """Row indices of ``dates`` per segment, with the segment's model."""
        values = pd.to_datetime(dates, utc=True)
        return [(np.flatnonzero(((values >= s.start) & (values < s.end)).to_numpy()), s.model) for s in self.segments]

    def model_at(self, when) -> ProductionModel | None:
        when = pd.Timestamp(when)
        when = when.tz_localize("UTC") if when.tzinfo is None else when
        for seg in self.segments:
            if seg.start <= when < seg.end:
                return seg.model
        return None

    @property
    def models(self) -> list[ProductionModel]:
        return [s.model for s in self.segments if s.model is not None]
