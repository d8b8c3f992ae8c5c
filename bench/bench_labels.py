"""Triple-barrier labels (horizon 24) on 1,000,000 candles, against a touch-only shortcut.

The reference is the common approximation: rolling max of highs and min of lows over the
horizon (talib.MAX / talib.MIN), which says whether a barrier is touched but not which
comes first. The ratio is what the exact first-touch order costs on top.
"""

from __future__ import annotations

import talib

from bench.common import best_of, emit
from ml.config import LabelSettings
from ml.labels import triple_barrier
from ml.synth import simulate

CANDLES = 1_000_000


def main() -> None:
    frame, _ = simulate(CANDLES, "1h", "null", seed=2)
    cfg = LabelSettings(horizon=24)
    highs, lows = frame["high"].to_numpy(), frame["low"].to_numpy()
    label_time = best_of(lambda: triple_barrier(frame, cfg, "1h"), repeat=3)
    reference = best_of(lambda: (talib.MAX(highs, 24), talib.MIN(lows, 24)), repeat=5)
    emit("labels", [{
        "figure": "labels, horizon 24, fixed barriers",
        "value": f"{CANDLES / label_time:,.0f} candles/s",
        "reference": f"talib.MAX + MIN over 24: {CANDLES / reference:,.0f} candles/s",
        "ratio": round(label_time / reference, 2),
        "goal": ">= 5,000,000 candles/s",
        "met": CANDLES / label_time >= 5_000_000,
    }])


if __name__ == "__main__":
    main()
