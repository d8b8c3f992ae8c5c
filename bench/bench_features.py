"""Default features on 1,000,000 candles, one core, against TA-Lib's own time for the same calls.

TA-Lib's share is measured by wrapping every talib function ``ml.features`` calls with a
timer during the same transform, so the reference is exactly the indicators we compute.
"""

from __future__ import annotations

import time

import talib

from bench.common import best_of, emit
from ml import features
from ml.features import FeatureEngineer
from ml.synth import simulate

CANDLES = 1_000_000


class _TimedTalib:
    """Stands in for the talib module inside ml.features, adding up time spent in TA-Lib."""

    def __init__(self):
        self.seconds = 0.0

    def __getattr__(self, name):
        fn = getattr(talib, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def main() -> None:
    frame, _ = simulate(CANDLES, "1h", "null", seed=1)
    fe = FeatureEngineer(timeframe="1h")
    fe.transform(frame.iloc[:5000])  # warm imports and caches
    total = best_of(lambda: fe.transform(frame), repeat=3)
    timed = _TimedTalib()
    features.talib = timed
    try:
        fe.transform(frame)
    finally:
        features.talib = talib
    talib_only = timed.seconds
    emit("features", [{
        "figure": f"features, {len(fe.feature_names)} default columns",
        "value": f"{CANDLES / total:,.0f} candles/s",
        "reference": f"TA-Lib calls alone: {CANDLES / talib_only:,.0f} candles/s",
        "ratio": round(total / talib_only, 2),
        "goal": ">= 1,000,000 candles/s",
        "met": CANDLES / total >= 1_000_000,
    }])


if __name__ == "__main__":
    main()
