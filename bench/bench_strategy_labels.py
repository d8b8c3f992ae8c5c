"""Labels from a strategy's own trades against a plain backtest of the same strategy.

20 synthetic pairs x 50,000 1h candles, TrendPullback. The label backtest
(``ml.trade_labels.strategy_trades``, no cache) runs freqtrade's engine with position
stacking and unlimited open trades, so every signal becomes a trade (about 2x the trades
of the plain run), split over one forked process per core by groups of pairs; the
reference is ``freqtrade backtesting`` of the same strategy and candles (offline runner),
as a user runs it (one process). A second label run shows what the cache saves. Goal: ratio <= 1.5.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit
from bench.project import make_project, timed_backtest
from ml.synth import write_market

PAIRS, CANDLES = 20, 50_000
LABELS = ("import sys; from ml.config import load; from ml.features import FeatureEngineer; "
          "from ml.trade_labels import strategy_trades; "
          "run = strategy_trades('config.json', 'TrendPullback', engineer=FeatureEngineer(load('config.json').features, '1h')); "
          "print(len(run.trades), run.cache_hit)")


def label_run(folder: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LABELS], cwd=folder, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout.strip().splitlines()[-1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pairs = [f"S{i:02d}/BTC" for i in range(PAIRS)]
        folder = make_project(Path(tmp) / "p", pairs, "1h")
        write_market(folder / "user_data" / "data" / "binance", pairs, "1h", CANDLES, "null", seed=21, hour_drift=0.5)
        plain, _ = timed_backtest(folder, "TrendPullback", "20240101-")
        labels, first = label_run(folder)
        cached, second = label_run(folder)
    trades = int(first.split()[0])
    emit("strategy_labels", [
        {"figure": f"label backtest, {PAIRS} pairs x {CANDLES:,} 1h candles ({trades:,} trades, every signal)",
         "value": f"{labels:.1f} s", "reference": f"{plain:.1f} s plain freqtrade backtest",
         "ratio": round(labels / plain, 2), "goal": "<= 1.5", "met": labels / plain <= 1.5},
        {"figure": "the same labels again, from the cache", "value": f"{cached:.1f} s ({second.split()[1]} = hit)",
         "reference": f"{labels:.1f} s uncached", "ratio": round(cached / labels, 2), "goal": "-", "met": True},
    ])


if __name__ == "__main__":
    main()
