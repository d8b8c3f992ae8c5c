"""Training: 35,000 rows x the default features, 30 Optuna trials with pruning, 2 cores.

The rows are a strategy's trades: tests/strategies/EveryFewHours.py set to enter every hour
(ROI 3%, stoploss 3%, time exit after 24 candles), so rows = candles after the warm-up.
Its label backtest runs once before the clock starts (it is cached; bench_strategy_labels
measures it). Reports wall time, trials pruned and peak RSS for the full run (goal: <= 3
minutes), then how wall time grows from 17.5k to 70k rows with a smaller budget (8 trials
each), measured in the same process: the ratio 70k / 17.5k.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import emit
from ml.config import from_dict, load
from ml.features import FeatureEngineer
from ml.models import available_cores
from ml.synth import write_market
from ml.trade_labels import strategy_trades
from ml.train import TrainRequest, train
from tests.conftest import TEST_STRATEGIES, write_config

WARM_UP = 480 + 24 + 1  # candles per pair that yield no closed trade with features


def project(folder: Path, rows: int) -> Path:
    n_pairs = 6
    pairs = [f"B{i}/BTC" for i in range(n_pairs)]
    (folder / "strategies").mkdir(parents=True)
    source = (TEST_STRATEGIES / "EveryFewHours.py").read_text().replace("every_hours = 6", "every_hours = 1")
    (folder / "strategies" / "EveryFewHours.py").write_text(source)
    write_config(folder / "config.json", strategy_path=str(folder / "strategies"),
                 exchange={"name": "binance", "pair_whitelist": pairs},
                 ml={"training": {"strategy": "EveryFewHours", "n_jobs": available_cores()},
                     "tracking": {"mode": "disabled"}})
    write_market(folder / "user_data" / "data" / "binance", pairs, "1h", rows // n_pairs + WARM_UP, "planted", seed=11)
    cfg = load(folder / "config.json")
    strategy_trades(folder / "config.json", "EveryFewHours", engineer=FeatureEngineer(cfg.features, "1h"))
    return folder


def run(folder: Path, trials: int, name: str) -> tuple[dict, float]:
    cfg = load(folder / "config.json").model_dump()
    cfg["training"]["trials"] = trials
    req = TrainRequest(folder / "config.json", "EveryFewHours", [], "1h", None, folder / name,
                       f"sqlite:///{folder}/o.db", name)
    start = time.perf_counter()
    summary = train(from_dict(cfg), req)
    return summary, time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = project(root / "35k", 35_000)
        full, full_s = run(base, 30, "full")
        small, small_s = run(project(root / "17k", 17_500), 8, "small")
        large, large_s = run(project(root / "70k", 70_000), 8, "large")
    n = sum(full["rows"].values())
    emit("training", [
        {"figure": f"{n:,} rows, 30 trials, all 4 families, {available_cores()} cores",
         "value": f"{full_s:.0f} s wall, {full['trials']['pruned']} of 30 pruned, best {full['family']}",
         "reference": f"goal 180 s; test AUC {full['test']['auc']:.3f}",
         "ratio": round(full_s / 180.0, 2), "goal": "<= 180 s", "met": full_s <= 180},
        {"figure": "growth 17.5k -> 70k rows (8 trials each)",
         "value": f"{large_s:.0f} s at {sum(large['rows'].values()):,} rows",
         "reference": f"{small_s:.0f} s at {sum(small['rows'].values()):,} rows",
         "ratio": round(large_s / small_s, 2), "goal": "~4x or less (linear in rows)", "met": large_s / small_s <= 4.5},
    ])


if __name__ == "__main__":
    main()
