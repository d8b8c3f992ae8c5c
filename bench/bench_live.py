"""The live path: populate_indicators (features + base signal + calibrated probability + EV)
for one pair on 1,000 candles, as freqtrade's loop calls it each new candle. Median of 50.

Reference in the same run: the un-gated twin's populate_indicators on the same frame.
Goal: median <= 20 ms.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from freqtrade.configuration import Configuration
from freqtrade.enums import RunMode
from freqtrade.resolvers import StrategyResolver

from bench.common import emit
from bench.project import make_project, train_and_promote
from ml.synth import simulate, write_market

REPEATS = 50


def median_ms(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def load(folder: Path, name: str):
    config = Configuration.from_files([str(folder / "config.json")])
    config.update(strategy=name, runmode=RunMode.DRY_RUN)
    strategy = StrategyResolver.load_strategy(config)
    strategy.ft_bot_start()
    return strategy


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [f"L{i}/BTC" for i in range(6)]  # enough of TrendPullback's trades to train on
        folder = make_project(Path(tmp), pairs, "1h")
        write_market(folder / "user_data" / "data" / "binance", pairs, "1h", 6000, "planted", seed=5)
        train_and_promote(folder, pairs, "20240101-20240901")
        frame = simulate(1000, "1h", "planted", seed=9, start="2025-01-01")[0]
        gated, twin = load(folder, "TrendPullbackML"), load(folder, "TrendPullback")
        meta = {"pair": "L0/BTC"}
        gated_ms = median_ms(lambda: gated.advise_indicators(frame.copy(), meta))
        twin_ms = median_ms(lambda: twin.advise_indicators(frame.copy(), meta))
    emit("live", [{"figure": "live populate_indicators + probability, 1 pair, 1,000 candles (median of 50)",
                   "value": f"{gated_ms:.1f} ms", "reference": f"un-gated twin {twin_ms:.1f} ms",
                   "ratio": round(gated_ms / twin_ms, 1), "goal": "<= 20 ms", "met": gated_ms <= 20}])


if __name__ == "__main__":
    main()
