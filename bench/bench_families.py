"""Model families side by side: fit time and out-of-fold log loss, one family per study.

The rows are a strategy's own trades (tests/strategies/EveryFewHours.py, entries at fixed
times; ROI 3%, stoploss 3%, 24-hour exit), labelled by freqtrade's backtest, on:

* "planted": 6 synthetic pairs of 1h candles with an intraday drift (a known edge);
* "real": the ten */BTC pairs of ../shared (Binance 5m candles, 2018-01-10..30), when present,
  entering every 15 minutes; features without the 4h timeframe (its warm-up is 10 days).

For each family, ``ml.train`` runs a study of ``TRIALS`` trials restricted to it (the same
purged time-ordered folds, pruning and calibration as a normal training) on the same rows.
Reported per market and family: seconds per trial, the best trial's out-of-fold log loss
(what the search compares), and the calibrated model's log loss and AUC on the untouched
test block. The ratio is the family's best out-of-fold log loss over LightGBM's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import emit
from ml.config import ALL_FAMILIES, from_dict, load
from ml.features import FeatureEngineer
from ml.models import available_cores
from ml.synth import write_market
from ml.trade_labels import strategy_trades
from ml.train import TrainRequest, train
from tests.conftest import TEST_STRATEGIES, write_config

TRIALS = 6
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "freqtrade-testdata"
SYNTH_PAIRS = [f"B{i}/BTC" for i in range(6)]


def project(folder: Path, pairs: list[str], timeframe: str, entries: str, features: dict | None = None) -> Path:
    """EveryFewHours entering where ``entries`` (a condition on ``df["date"]``) holds."""
    (folder / "strategies").mkdir(parents=True)
    source = (TEST_STRATEGIES / "EveryFewHours.py").read_text()
    source = source.replace('(df["date"].dt.hour % self.every_hours == 0)', f"({entries})")
    (folder / "strategies" / "EveryFewHours.py").write_text(source)
    write_config(folder / "config.json", strategy_path=str(folder / "strategies"), timeframe=timeframe,
                 exchange={"name": "binance", "pair_whitelist": pairs},
                 ml={"training": {"strategy": "EveryFewHours", "n_jobs": available_cores(), "min_samples": 200},
                     "features": features or {}, "tracking": {"mode": "disabled"}})
    return folder


def labelled(folder: Path, timeframe: str) -> Path:
    cfg = load(folder / "config.json")
    strategy_trades(folder / "config.json", "EveryFewHours", engineer=FeatureEngineer(cfg.features, timeframe))
    return folder


def synthetic(folder: Path) -> Path:
    project(folder, SYNTH_PAIRS, "1h", 'df["date"].dt.minute == 0')  # every candle
    write_market(folder / "user_data" / "data" / "binance", SYNTH_PAIRS, "1h", 2600, "null", seed=11, hour_drift=0.5)
    return labelled(folder, "1h")


def real(folder: Path) -> Path | None:
    files = sorted(SHARED.glob("*_BTC-5m.feather"))
    if not files:
        return None
    # 20 days of candles: every 15 minutes, and no 4h features (their warm-up would take 10 days)
    project(folder, [f.name.split("-")[0].replace("_", "/") for f in files], "5m", 'df["date"].dt.minute % 15 == 0',
            {"higher_timeframes": ["1h"]})
    data = folder / "user_data" / "data" / "binance"
    data.mkdir(parents=True)
    for f in files:
        shutil.copy(f, data / f.name)
    return labelled(folder, "5m")


def study(folder: Path, timeframe: str, name: str, **training) -> tuple[dict, float]:
    """One training of ``TRIALS`` trials (unless ``training`` says otherwise) with these
    ``training`` settings, into ``folder/name``:
    its summary (with the best trial's out-of-fold log loss) and wall seconds."""
    cfg = load(folder / "config.json").model_dump()
    cfg["training"].update({"trials": TRIALS, **training})
    req = TrainRequest(folder / "config.json", "EveryFewHours", [], timeframe, None, folder / name,
                       f"sqlite:///{folder}/o.db", name)
    start = time.perf_counter()
    summary = train(from_dict(cfg), req)
    seconds = time.perf_counter() - start
    metrics = json.loads((Path(summary["bundle"]) / "metrics.json").read_text())
    return {**summary, "oof_log_loss": metrics["trials"]["best_value"]}, seconds


def both_markets(rows_for) -> list[dict]:
    """``rows_for(market, folder, timeframe)`` on the planted market, then on the real pairs
    when ../shared has them."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = rows_for("planted", synthetic(root / "planted"), "1h")
        shared = real(root / "real")
        if shared:
            rows += rows_for("real 5m", shared, "5m")
    return rows


def rows_for(market: str, folder: Path, timeframe: str) -> list[dict]:
    results = {family: study(folder, timeframe, family, families=[family]) for family in ALL_FAMILIES}
    reference = results["lightgbm"][0]["oof_log_loss"]
    rows = []
    for family, (summary, seconds) in results.items():
        test = summary["test"]
        rows.append({
            "figure": f"{market}: {family} ({sum(summary['rows'].values()):,} trades, {TRIALS} trials)",
            "value": f"{seconds / TRIALS:.1f} s/trial; out-of-fold log loss {summary['oof_log_loss']:.4f}",
            "reference": f"test log loss {test['log_loss']:.4f}, AUC {test['auc']:.3f}; lightgbm out-of-fold "
                         f"{reference:.4f}",
            "ratio": round(summary["oof_log_loss"] / reference, 4), "goal": "report", "met": None})
    return rows


def main() -> None:
    emit("families", both_markets(rows_for))


if __name__ == "__main__":
    main()
