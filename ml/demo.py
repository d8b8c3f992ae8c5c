"""``ftml demo``: the whole loop offline, in a few minutes, in its own folder.

1. data: the config's candles when its data directory has every pair at its timeframe,
   otherwise a synthetic market with a *planted* intraday drift (said loudly), an edge
   that any strategy's trades show;
2. train on the strategy's own trades (``training.strategy``, default TrendPullback) with a
   small Optuna budget (``FTML_DEMO_TRIALS``, default 10), W&B offline into ./wandb; the
   first 75% of the candles only;
3. validate against the gates and promote (a model with no edge is *not* promoted);
4. backtest the gated strategy and its un-gated twin on the last 25%, which the model
   never saw, through the offline freqtrade runner;
5. print where everything is and the numbers that matter.

Everything the demo writes lives in ``user_data/demo/`` (config, registry, models,
backtests, synthetic data), which each run replaces whole, so a second run starts clean.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ml import jsonsafe
from ml.cli import freqtrade_settings, synthetic_pairs
from ml.config import read_json
from ml.data import DataError, available_pairs, candle_dates
from ml.display import make_console
from ml.synth import write_market

DEMO_CANDLES = 30_000
DEMO_SEED = 4
DEMO_HOUR_DRIFT = 0.5  # an intraday drift: an edge any strategy's trades can show (see ml.synth)
DEFAULT_STRATEGY = "TrendPullback"


def _ftml(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml.cli", *args], cwd=cwd, capture_output=True, text=True)


def _check(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done


def prepare(config_path: Path, console: Console) -> tuple[Path, bool, dict[str, Any]]:
    """Write user_data/demo/config.json; return it, whether data is synthetic, and settings."""
    ft = freqtrade_settings(config_path)
    demo = (Path(ft["user_data_dir"]) / "demo").resolve()
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    cfg = read_json(config_path)
    have = set(available_pairs(ft["datadir"], ft["timeframe"], ft["data_format"])) if ft["datadir"].is_dir() else set()
    missing = not ft["pairs"] or not set(ft["pairs"]) <= have
    # Files `ftml data synth` wrote are data, but not a real market: say so.
    written = synthetic_pairs(ft["datadir"], ft["pairs"], ft["timeframe"], ft["data_format"]) if not missing else {}
    synthetic = missing or bool(written)
    datadir = demo / "user_data" / "data" / ft["exchange"]  # where freqtrade will look
    if missing:
        console.print(f"[bold yellow]No {ft['timeframe']} candles for every pair in {ft['datadir']}: using a SYNTHETIC "
                      f"planted market ({DEMO_CANDLES} candles per pair). The numbers below are not a real market.[/]")
        write_market(datadir, ft["pairs"], ft["timeframe"], DEMO_CANDLES, "null", DEMO_SEED,
                     data_format=ft["data_format"], hour_drift=DEMO_HOUR_DRIFT)
    else:
        datadir.parent.mkdir(parents=True)
        datadir.symlink_to(Path(ft["datadir"]).resolve(), target_is_directory=True)
        if written:
            console.print(f"[bold yellow]Using SYNTHETIC candles from {ft['datadir']}, written by `ftml data synth` "
                          f"({', '.join(sorted(set(written.values())))}, {len(written)} of {len(ft['pairs'])} pairs). "
                          "The numbers below are not a real market.[/]")
        else:
            console.print(f"Using real candles from {ft['datadir']} ({len(ft['pairs'])} pairs, {ft['timeframe']}).")
    strategies = Path(cfg.get("strategy_path", "strategies"))
    cfg.update(user_data_dir=str(demo / "user_data"),
               strategy_path=str(strategies if strategies.is_absolute() else (config_path.parent / strategies).resolve()),
               max_open_trades=max(cfg.get("max_open_trades", 5), 3 * len(ft["pairs"])))
    ml = cfg.setdefault("ml", {})
    ml["registry"] = {**ml.get("registry", {}), "path": str(demo / "registry")}
    trials = int(os.environ.get("FTML_DEMO_TRIALS", "10"))
    strategy = ml.get("training", {}).get("strategy") or DEFAULT_STRATEGY
    ml["training"] = {**ml.get("training", {}), "strategy": strategy, "trials": trials,
                      "families": ["lightgbm", "logistic"]}
    (demo / "user_data").mkdir(exist_ok=True)
    (demo / "config.json").write_text(jsonsafe.dumps(cfg, indent=1))
    return demo, synthetic, ft


def _ranges(datadir: Path, pair: str, timeframe: str, data_format: str) -> tuple[str, str]:
    """Train on the first 75% of the candles, backtest on the rest."""
    dates = candle_dates(datadir, pair, timeframe, data_format).sort_values()
    if dates.empty:
        raise DataError(f"No {timeframe} candles for {pair} in {datadir} ({data_format}).")
    cut = dates.iloc[int(len(dates) * 0.75)]
    return f"-{cut:%Y%m%d}", f"{(cut + pd.Timedelta(days=1)):%Y%m%d}-"


def run_demo(config_path: str) -> int:
    console = make_console()
    config_path = Path(config_path).resolve()
    demo, synthetic, ft = prepare(config_path, console)
    cfg = json.loads((demo / "config.json").read_text())
    datadir = Path(cfg["user_data_dir"]) / "data" / ft["exchange"]
    train_range, test_range = _ranges(datadir, ft["pairs"][0], ft["timeframe"], ft["data_format"])

    console.print(f"[bold]1/3 Training[/] on {train_range} ({cfg['ml']['training']['trials']} Optuna trials) ...")
    done = _check(_ftml(["train", "-c", str(demo / "config.json"), "--timerange", train_range,
                         "--output", str(demo / "model"), "--job-type", "demo"], cwd=Path.cwd()), "training")
    trained = json.loads(done.stdout.strip().splitlines()[-1])
    version, name = str(trained["registered"]["version"]), trained["model"]
    twin = cfg["ml"]["training"]["strategy"]
    gated = cfg["ml"].get("retrain", {}).get("strategy") or f"{twin}ML"

    console.print("[bold]2/3 Validating[/] against the gates in config.json ...")
    validated = _ftml(["registry", "validate", name, version, "-c", str(demo / "config.json"), "--json"],
                      cwd=Path.cwd())
    gates = json.loads(validated.stdout)
    promoted = gates["passed"]
    if promoted:
        _check(_ftml(["registry", "promote", name, version, "-c", str(demo / "config.json")],
                     cwd=Path.cwd()), "promotion")
    else:
        failed = [c["name"] for c in gates["checks"] if not c["passed"]]
        console.print(f"[red]Not promoted: gates failed ({', '.join(failed)}). The gated strategy will not trade.[/]")

    console.print(f"[bold]3/3 Backtesting[/] {gated} vs {twin} on {test_range} (after the training data) ...")
    export = demo / "backtest"
    export.mkdir()
    _check(_ftml(["freqtrade", "--offline", "backtesting", "-c", str(demo / "config.json"), "--strategy-list",
                       gated, twin, "--timerange", test_range, "--export", "trades", "--backtest-directory",
                       str(export)], cwd=Path.cwd()), "backtest")
    from freqtrade.data.btanalysis.bt_fileutils import load_backtest_stats

    stats = load_backtest_stats(export)["strategy"]
    summary = _summary(trained, gates, promoted, stats, synthetic, demo, gated, twin)
    _print_summary(console, summary)
    print(jsonsafe.dumps(summary))
    return 0


def _per_trade(s: dict[str, Any]) -> float | None:
    trades = s.get("trades", [])
    return sum(t["profit_ratio"] for t in trades) / len(trades) if trades else None


def per_trade_difference(gated: list[float], twin: list[float]) -> dict[str, float] | None:
    """Mean profit per trade of the gated strategy minus its twin's, with the standard error
    of that difference (Welch: the two sets of trades have their own spreads)."""
    if len(gated) < 2 or len(twin) < 2:
        return None
    g, t = np.asarray(gated, dtype=np.float64), np.asarray(twin, dtype=np.float64)
    diff = float(g.mean() - t.mean())
    se = float(math.sqrt(g.var(ddof=1) / len(g) + t.var(ddof=1) / len(t)))
    return {"difference": diff, "se": se, "z": diff / se if se > 0 else float("nan")}


def _summary(trained, gates, promoted, stats, synthetic, demo, gated, twin) -> dict[str, Any]:
    test = trained["test"]
    return {
        "synthetic": synthetic, "verdict": trained["verdict"], "promoted": promoted,
        "production_version": trained["registered"]["version"] if promoted else None,
        "bundle": trained["bundle"], "plots": str(Path(trained["bundle"]) / "plots"),
        "registry": str(demo / "registry"), "wandb": trained.get("tracking"), "backtest": str(demo / "backtest"),
        "calibration": {"auc": test["auc"], "ece": test["ece"], "ece_raw": test["ece_raw"],
                        "ece_noise_band_90": test.get("ece_noise_band_90_effective") or test["ece_noise_band_90"],
                        "mean_p": test["mean_p"], "base_rate": test["base_rate"], "brier_skill": test["brier_skill"],
                        "calibration_in_the_large": test["calibration_in_the_large"],
                        "calibration_in_the_large_se": test["calibration_in_the_large_se"],
                        "spiegelhalter_z": test.get("spiegelhalter_z_effective", test["spiegelhalter_z"]),
                        "method": test.get("calibration_method")},
        "gates_passed": gates["passed"],
        "model": trained["model"], "strategies": {"gated": gated, "ungated": twin},
        "gated": {"trades": stats[gated]["total_trades"], "profit_per_trade": _per_trade(stats[gated])},
        "ungated": {"trades": stats[twin]["total_trades"], "profit_per_trade": _per_trade(stats[twin])},
        "gated_minus_ungated": per_trade_difference([t["profit_ratio"] for t in stats[gated].get("trades", [])],
                                                    [t["profit_ratio"] for t in stats[twin].get("trades", [])]),
    }


def _difference(d: dict[str, float] | None) -> str:
    if d is None:
        return "- (too few trades)"
    return f"{100 * d['difference']:+.2f}% ({100 * d['se']:.2f}%, {d['z']:+.1f} SE)"


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:+.2f}%"

    table = Table(title="Demo summary" + (" (SYNTHETIC planted market)" if s["synthetic"] else ""))
    table.add_column("")
    table.add_column("value")
    c = s["calibration"]
    rows = [
        ("verdict on the untouched test block", s["verdict"]),
        ("promoted to production", "yes" if s["promoted"] else "no"),
        ("test AUC", f"{c['auc']:.3f}"),
        ("ECE raw -> calibrated (noise band)",
         f"{c['ece_raw']:.3f} -> {c['ece']:.3f} ({c['ece_noise_band_90'][0]:.3f}-{c['ece_noise_band_90'][1]:.3f})"),
        ("mean p vs hit rate (SE)", f"{c['mean_p']:.3f} vs {c['base_rate']:.3f} "
                                    f"({c['calibration_in_the_large_se']:.3f})"),
        ("Spiegelhalter Z (|Z| < 2: calibrated)", f"{c['spiegelhalter_z']:+.2f}"),
        (f"{s['strategies']['gated']}: trades, profit per trade", f"{s['gated']['trades']}, {pct(s['gated']['profit_per_trade'])}"),
        (f"{s['strategies']['ungated']}: trades, profit per trade", f"{s['ungated']['trades']}, {pct(s['ungated']['profit_per_trade'])}"),
        ("gated - un-gated profit per trade (SE)", _difference(s["gated_minus_ungated"])),
        ("model bundle", s["bundle"]), ("plots", s["plots"]), ("registry", s["registry"]),
        ("W&B run (offline: `wandb sync` it)", str(s["wandb"])), ("backtest results", s["backtest"]),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
