"""Walk-forward side by side with FreqAI: same candles, timerange and retrain period.

FreqAI: freqtrade's own ``FreqaiExampleStrategy`` with ``LightGBMClassifier`` and an up/down
label (bench/freqai/FreqaiUpDown.py, spot: no shorts), one backtest through the offline
runner, retrained every ``EVERY_DAYS`` on the ``TRAIN_DAYS`` before. ftml: ``ftml walkforward
--cache none`` of a strategy that buys every few hours, gated by ``MLGate``, retrained by the
cron rules every ``EVERY_DAYS`` on ``TRAIN_DAYS`` of its own trades.

Each side runs in its own process tree; wall time and peak memory (PSS summed over the
tree, sampled every 0.2 s) are its own. The two sides predict different things (FreqAI: is the
close AHEAD candles ahead higher; ftml: does this strategy's trade win), so each log loss is
set against the constant forecast of its own base rate, known before each retrain.
FreqAI's label looks ``AHEAD`` candles ahead (its example uses 20 on 5m candles). Needs
``datasieve`` (``make bench`` installs it; it is not a dependency of the package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from sklearn.metrics import log_loss, roc_auc_score

from bench.common import emit
from ml.synth import write_market

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [f"F{i}/BTC" for i in range(6)]
CANDLES = 6600  # 2024-01-01 .. 2024-10-02, 1h
RANGE = "20240401-20240830"  # five retrains, 30 days apart
EVERY_DAYS, TRAIN_DAYS, AHEAD = 30, 60, 6
FREQAI = {
    "enabled": True, "identifier": "bench-updown", "purge_old_models": 2, "live_retrain_hours": 0,
    "train_period_days": TRAIN_DAYS, "backtest_period_days": EVERY_DAYS,
    "feature_parameters": {"include_timeframes": ["1h"], "include_corr_pairlist": [], "label_period_candles": AHEAD,
                           "include_shifted_candles": 2, "DI_threshold": 0.9, "weight_factor": 0.9,
                           "principal_component_analysis": False, "use_SVM_to_remove_outliers": True,
                           "indicator_periods_candles": [10, 20], "plot_feature_importances": 0},
    # freqtrade's example config, as users start from it (its split for early stopping shuffles)
    "data_split_parameters": {"test_size": 0.33, "random_state": 1},
    "model_training_parameters": {"n_jobs": 1, "verbosity": -1},
}
ML = {"tracking": {"mode": "disabled"},
      "training": {"strategy": "EveryFewHours", "trials": 4, "families": ["lightgbm"], "min_samples": 200, "n_jobs": 1},
      "retrain": {"window_days": EVERY_DAYS, "train_days": TRAIN_DAYS, "strategy": "EveryFewHoursML"},
      "recalibration": {"window_days": EVERY_DAYS}}


# "planted": an intraday drift (up in the early UTC hours, down in the late ones) that both
# can see: hour-of-day features for ftml's model of the strategy's trades, FreqAI's own
# %-hour_of_day for its 6-candle up/down label. (The synthetic "planted" mean reversion is
# too short-lived to show in either target.)
MARKETS = {"null": {"market": "null"}, "planted": {"market": "null", "hour_drift": 0.5}}


def project(folder: Path, market: str) -> Path:
    cfg = json.loads((ROOT / "config.json").read_text())
    strategies = folder / "strategies"
    strategies.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "strategies" / "EveryFewHours.py", strategies)
    shutil.copy(ROOT / "bench" / "freqai" / "FreqaiUpDown.py", strategies)
    (strategies / "EveryFewHoursML.py").write_text(
        "from ml.gate import MLGate\nfrom EveryFewHours import EveryFewHours\n\n\n"
        "class EveryFewHoursML(MLGate, EveryFewHours):\n    pass\n")
    cfg.update(strategy_path=str(strategies), user_data_dir=str(folder / "user_data"), timeframe="1h",
               max_open_trades=len(PAIRS))
    cfg["exchange"]["pair_whitelist"] = PAIRS
    cfg["ml"] = {**ML, "registry": {"path": str(folder / "registry")}}
    (folder / "user_data").mkdir()
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    # FreqAI's own config: with a "freqai" section every backtest of that config is FreqAI's
    (folder / "config-freqai.json").write_text(json.dumps({**cfg, "freqai": FREQAI}, indent=1))
    write_market(folder / "user_data" / "data" / "binance", PAIRS, "1h", CANDLES, seed=11, **MARKETS[market])
    return folder


def _pss(process: psutil.Process) -> int:
    """Proportional set size: forked children (the label backtest's pair groups) share most
    pages with their parent, which a sum of RSS would count once per process."""
    try:
        return process.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return process.memory_info().rss


def measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; its wall seconds and its peak memory (MB): PSS summed over its process tree."""
    start, peak = time.perf_counter(), 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True, env={**os.environ, **env})
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(_pss(p) for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:6])} failed: {done.stderr[-2000:]}")
    return done, wall, peak / 2**20


def base_rates(up: pd.Series, dates: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Each row's constant forecast: the up-rate of the TRAIN_DAYS before its retrain, labels known then."""
    period = ((dates - start) // pd.Timedelta(days=EVERY_DAYS)).to_numpy()
    rates = {}
    for k in np.unique(period):
        moment = start + pd.Timedelta(days=EVERY_DAYS * int(k))
        known = (dates >= moment - pd.Timedelta(days=TRAIN_DAYS)) & (dates < moment - pd.Timedelta(hours=AHEAD))
        rates[k] = up[known].mean()
    return np.array([rates[k] for k in period])


def freqai_side(folder: Path) -> dict:
    predictions = folder / "freqai-predictions"
    predictions.mkdir()
    (folder / "bt-freqai").mkdir()
    start, end = RANGE.split("-")
    done, wall, rss = measured(
        [sys.executable, "-m", "ml.cli", "freqtrade", "--offline", "backtesting", "-c", "config-freqai.json",
         "--strategy", "FreqaiUpDown", "--freqaimodel", "LightGBMClassifier", "--timerange", RANGE, "--cache", "none",
         "--export", "trades", "--backtest-directory", str(folder / "bt-freqai")],
        folder, {"FTML_FREQAI_PREDICTIONS": str(predictions), "OMP_NUM_THREADS": "1"})
    first, last = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    y, p, base = [], [], []
    for path in sorted(predictions.glob("*.feather")):
        frame = pd.read_feather(path)
        frame["label"] = (frame["close"].shift(-AHEAD) > frame["close"]).astype(float)
        frame.loc[frame["close"].shift(-AHEAD).isna(), "label"] = np.nan
        rates = base_rates(frame["label"], frame["date"], first)
        scored = (frame["date"] >= first) & (frame["date"] < last) & frame["label"].notna() & frame["up"].notna()
        y.append(frame.loc[scored, "label"].to_numpy())
        p.append(frame.loc[scored, "up"].to_numpy())
        base.append(rates[scored.to_numpy()])
    y, p, base = np.concatenate(y), np.clip(np.concatenate(p), 1e-6, 1 - 1e-6), np.concatenate(base)
    stats = _backtest(folder / "bt-freqai", "FreqaiUpDown")
    return {"wall_s": wall, "rss_mb": rss, "models": done.stderr.count("Done training"), "rows": len(y),
            "auc": roc_auc_score(y, p), "log_loss": log_loss(y, p), "base_log_loss": log_loss(y, base),
            "trades": stats["total_trades"], "profit_mean": stats["profit_mean"]}


def ftml_side(folder: Path) -> dict:
    done, wall, rss = measured(
        [sys.executable, "-m", "ml.cli", "walkforward", "-c", "config.json", "--timerange", RANGE,
         "--every", f"{EVERY_DAYS}d", "--cache", "none", "--json"], folder, {"OMP_NUM_THREADS": "1"})
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads(Path(summary["folder"], "report.json").read_text())
    scores, gated = report["overall"]["challenger_scores"], report["overall"]["backtest"]["gated"]
    return {"wall_s": wall, "rss_mb": rss, "models": len(report["trained"]), "rows": scores["rows"],
            "auc": scores["auc"], "log_loss": scores["log_loss"], "base_log_loss": scores["base_rate_log_loss"],
            "trades": gated["trades"], "profit_mean": gated["mean_profit_ratio"],
            "ungated_trades": report["overall"]["backtest"]["ungated"]["trades"],
            "ungated_profit_mean": report["overall"]["backtest"]["ungated"]["mean_profit_ratio"],
            "promotions": report["overall"]["promotions"], "timings": report.get("timings")}


def _backtest(folder: Path, strategy: str) -> dict:
    from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats

    return load_backtest_stats(folder)["strategy"][strategy]


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:+.2f}%"


def rows_for(market: str, fq: dict, ours: dict) -> list[dict]:
    per_model_fq, per_model_ours = fq["wall_s"] / fq["models"], ours["wall_s"] / ours["models"]
    ll = f"{ours['log_loss']:.4f} (base {ours['base_log_loss']:.4f}, AUC {ours['auc']:.3f}, {ours['rows']} trades)"
    ll_fq = f"FreqAI {fq['log_loss']:.4f} (base {fq['base_log_loss']:.4f}, AUC {fq['auc']:.3f}, {fq['rows']} candles)"
    return [
        {"figure": f"{market}: wall time, whole walk-forward ({ours['models']} ftml models, {len(PAIRS)} pairs)",
         "value": f"{ours['wall_s']:.0f} s", "reference": f"FreqAI {fq['wall_s']:.0f} s ({fq['models']} models)",
         "ratio": round(ours["wall_s"] / fq["wall_s"], 2), "goal": "-", "met": True},
        {"figure": f"{market}: wall time per model trained", "value": f"{per_model_ours:.1f} s",
         "reference": f"FreqAI {per_model_fq:.1f} s", "ratio": round(per_model_ours / per_model_fq, 2),
         "goal": "<= 0.33", "met": per_model_ours <= per_model_fq / 3},
        {"figure": f"{market}: peak memory (PSS summed over the process tree)", "value": f"{ours['rss_mb']:.0f} MB",
         "reference": f"FreqAI {fq['rss_mb']:.0f} MB", "ratio": round(ours["rss_mb"] / fq["rss_mb"], 2),
         "goal": "< 1", "met": ours["rss_mb"] < fq["rss_mb"]},
        {"figure": f"{market}: out-of-sample log loss", "value": ll, "reference": ll_fq,
         "ratio": round((ours["log_loss"] - ours["base_log_loss"]) - (fq["log_loss"] - fq["base_log_loss"]), 4),
         "goal": "ftml <= its base + 0.005" if market == "null" else "ftml < its base",
         "met": ours["log_loss"] <= ours["base_log_loss"] + (0.005 if market == "null" else 0.0)},
        {"figure": f"{market}: trades, mean profit per trade (gated)",
         "value": f"{ours['trades']}, {_pct(ours['profit_mean'])} (un-gated {ours['ungated_trades']}, "
                  f"{_pct(ours['ungated_profit_mean'])})",
         "reference": f"FreqAI {fq['trades']}, {_pct(fq['profit_mean'])}", "ratio": "-", "goal": "-", "met": True},
    ]


def main() -> None:
    rows, raw = [], {}
    for market in MARKETS:
        with tempfile.TemporaryDirectory() as tmp:
            folder = project(Path(tmp), market)
            raw[market] = {"freqai": freqai_side(folder), "ftml": ftml_side(folder)}
        print(json.dumps(raw[market], default=str), file=sys.stderr)
        rows += rows_for(market, raw[market]["freqai"], raw[market]["ftml"])
    emit("freqai side by side", rows)


if __name__ == "__main__":
    main()
