"""``ftml drift``: the production model's training rows against the most recent window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ml.config import MLConfig
from ml.dataset import build_trade_dataset
from ml.display import make_console
from ml.drift import MAJOR, MODERATE, drift_report
from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.predictor import ProductionModel


class DriftError(FtmlError, ValueError):
    """The production model cannot be compared with recent data; the message says why."""


def _naive(ts: str) -> np.datetime64:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_datetime64()


def model_rows(cfg: MLConfig, ft: dict[str, Any], entry: dict[str, Any], config_path: str | Path):
    """Every row of the kind the model was trained on, over all stored candles: its
    strategy's own trades (label backtest, cached)."""
    from ml.trade_labels import strategy_trades

    if entry.get("label_source") != "trades" or not entry.get("strategy"):
        raise DriftError(f"{entry.get('name')} v{entry.get('id')} was trained on fixed-barrier labels by an earlier "
                         "version; retrain it on the strategy's own trades (ftml train --strategy ...) to check drift.")
    engineer = FeatureEngineer(cfg.features, ft["timeframe"])
    run = strategy_trades(config_path, entry["strategy"], None, entry.get("pairs") or ft["pairs"], engineer=engineer)
    return build_trade_dataset(cfg, run, min_rows=0)


def run_drift(cfg: MLConfig, ft: dict[str, Any], name: str, window_days: int,
              config_path: str | Path) -> dict[str, Any]:
    engineer = FeatureEngineer(cfg.features, ft["timeframe"])
    model = ProductionModel.load(cfg.registry.path, name, engineer)
    entry = model.entry
    data = model_rows(cfg, ft, entry, config_path)
    start, end = (_naive(t) for t in entry["ranges"]["train"])
    reference = (data.times >= start) & (data.times <= end)
    window_start = data.times.max() - np.timedelta64(window_days, "D")
    current = data.times > max(window_start, _naive(str(model.train_end)))
    X_cur = data.X.loc[current, model.feature_names]
    report = drift_report(data.X.loc[reference, model.feature_names], X_cur, data.y[current],
                          model.bundle.predict_proba(X_cur.to_numpy(dtype=np.float64)) if current.any() else None)
    report.update(model=name, version=model.version, window_days=window_days,
                  window=[str(pd.Timestamp(window_start, tz="UTC")), str(pd.Timestamp(data.times.max(), tz="UTC"))],
                  threshold=cfg.retrain.max_psi, drifted=report["max_psi"] > cfg.retrain.max_psi,
                  # Age of what the model knows: days of candles since its newest fitted one
                  # (train_end), not since registration (a model registered today on year-old
                  # data is a year old). Measured to the newest candle, which is "now" live.
                  model_age_days=(pd.Timestamp(data.times.max(), tz="UTC") - model.train_end).days)
    return report


def print_drift(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    console.print(f"[bold]{report['model']} v{report['version']}[/]: training rows ({report['reference_rows']}) vs the "
                  f"last {report['window_days']} days ({report['current_rows']} rows, {report['window'][0][:16]} -> "
                  f"{report['window'][1][:16]})")
    table = Table(title=f"Feature drift (PSI; > {MODERATE} moderate, > {MAJOR} major)")
    table.add_column("feature")
    table.add_column("PSI", justify="right")
    for row in report["top"]:
        style = "red" if row["psi"] > MAJOR else ("yellow" if row["psi"] > MODERATE else None)
        table.add_row(row["feature"], f"{row['psi']:.3f}", style=style)
    console.print(table)
    console.print(f"max PSI {report['max_psi']:.3f}, {report['features_major']} major, "
                  f"{report['features_moderate']} moderate -> "
                  + ("[red]drift above the threshold[/]" if report["drifted"] else "[green]no drift above the threshold[/]"))
    cal = report.get("calibration")
    if cal:
        console.print(f"calibration on the window: ECE {cal['ece']:.3f}, mean p {cal['mean_p']:.3f} vs hit rate "
                      f"{cal['hit_rate']:.3f} (difference {cal['calibration_in_the_large']:+.3f}, "
                      f"{cal['rows']} labelled rows)")
