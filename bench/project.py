"""A throw-away freqtrade project with a production model, for benchmarks."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_project(folder: Path, pairs: list[str], timeframe: str, stake: str = "BTC",
                 higher_timeframes: list[str] | None = None, strategy: str = "TrendPullback") -> Path:
    cfg = json.loads((ROOT / "config.json").read_text())
    cfg.update(strategy_path=str(ROOT / "strategies"), user_data_dir=str(folder / "user_data"), timeframe=timeframe,
               max_open_trades=len(pairs), stake_currency=stake)
    cfg["exchange"]["pair_whitelist"] = pairs
    cfg["ml"]["tracking"] = {"mode": "disabled"}
    cfg["ml"]["registry"] = {"path": str(folder / "registry")}
    # Two folds: a benchmark needs a working model, not a tuned one, and some projects here
    # hold only a few hundred of the strategy's trades.
    cfg["ml"]["training"] = {"strategy": strategy, "trials": 2, "families": ["lightgbm"], "min_samples": 200,
                             "folds": 2}
    if higher_timeframes is not None:
        cfg["ml"]["features"] = {"higher_timeframes": higher_timeframes}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user_data").mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def ftml(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ml.cli", *args], cwd=folder, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"ftml {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done


def train_and_promote(folder: Path, pairs: list[str], timerange: str) -> dict:
    summary = json.loads(ftml(folder, "train", "-c", "config.json", "--pairs", *pairs, "--timerange", timerange)
                         .stdout.strip().splitlines()[-1])
    version = str(summary["registered"]["version"])
    ftml(folder, "registry", "promote", summary["model"], version, "-c", "config.json", "--force",
         "--reason", "benchmark")
    return summary


def timed_backtest(folder: Path, strategy: str, timerange: str) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS (MB) of one offline backtest."""
    export = folder / f"bt_{strategy}"
    shutil.rmtree(export, ignore_errors=True)
    export.mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    ftml(folder, "freqtrade", "--offline", "backtesting", "-c", "config.json", "--strategy", strategy,
         "--timerange", timerange, "--export", "none", "--cache", "none")
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024.0
