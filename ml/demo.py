"""``ftml demo``: the end-to-end slice that exists so far, offline.

Uses real candles when the config's data directory has them for every pair; otherwise
writes a synthetic *planted* market and says so. Then backtests the plain strategy through
the offline freqtrade runner. Later issues extend this to train -> promote -> gated vs
un-gated backtest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from ml.cli import freqtrade_settings
from ml.data import available_pairs
from ml.synth import write_market

DEMO_CANDLES = 8_000
DEMO_SEED = 7


def ensure_data(config_path: str, console: Console) -> tuple[bool, dict]:
    """Return (synthetic?, freqtrade settings), writing a planted market when data is missing."""
    ft = freqtrade_settings(config_path)
    have = set(available_pairs(ft["datadir"], ft["timeframe"], ft["data_format"]))
    if set(ft["pairs"]) <= have:
        console.print(f"Using real candles from {ft['datadir']} ({len(ft['pairs'])} pairs).")
        return False, ft
    console.print(
        f"[yellow]No candles for {', '.join(sorted(set(ft['pairs']) - have))} in {ft['datadir']}: "
        f"writing a SYNTHETIC planted market ({DEMO_CANDLES} x {ft['timeframe']} candles per pair). "
        "Results below are on synthetic data.[/]"
    )
    write_market(ft["datadir"], ft["pairs"], ft["timeframe"], DEMO_CANDLES, "planted", DEMO_SEED)
    return True, ft


def run_demo(config_path: str) -> int:
    console = Console()
    synthetic, ft = ensure_data(config_path, console)
    export_dir = Path(ft["user_data_dir"]) / "backtest_results" / "demo"
    export_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "ml.cli", "freqtrade", "--offline", "backtesting",
        "-c", config_path, "--strategy", "TrendPullback", "--export", "trades",
        "--backtest-directory", str(export_dir),
    ]
    console.print("Backtesting the plain TrendPullback strategy offline: " + " ".join(cmd[2:]))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout[-3000:] + done.stderr[-3000:])
        console.print("[red]Backtest failed.[/]")
        return done.returncode
    summary_lines = [ln for ln in done.stdout.splitlines() if "TrendPullback" in ln]
    console.print("\n".join(summary_lines[-1:]))
    console.print(json.dumps({"synthetic": synthetic, "backtest_results": str(export_dir)}))
    return 0
