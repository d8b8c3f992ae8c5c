"""``ftml recalibrate``: refit only the calibration layer of the production model, from
trades whose outcome is already known.

A calibrator fitted once follows the base rate of its calibration block; months later the
market's base rate has moved (a bear market: every long wins less often) and the
probabilities are off by the same amount everywhere. The model's *ranking* usually still
holds, so refitting the small map from raw score to probability on recent outcomes fixes
most of it without a retrain. Steps:

1. rows: the strategy's own trades (its label backtest) opened in the last
   ``recalibration.window_days`` before ``now``, and after the model's training block (the
   model never scores rows it was fitted on);
2. only *resolved* rows: ``label_end`` (the trade's close) strictly before ``now``. A trade
   still open at ``now`` says nothing yet; :func:`resolved` is the one place that decides;
3. the newest ``holdout_fraction`` of them is held out; the rest, purged of trades still
   open when the holdout starts, refits the map on top of the training calibrator: a shift
   of the base rate, or shift and slope when the slope earns it (``ml.calibration.revise``;
   the ranking the model was promoted for is kept, never inverted or flattened);
4. the new calibrator is applied only when its log loss on the holdout is lower than the
   current calibrator's. Then the registry records it as a revision of the same version
   (``calibrator.r<n>.json``, sha256, an event, rollback), whose ``fit_end`` extends the
   in-sample guard; running bots hot-reload it like a promotion.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import calibration
from ml.bundle import load_bundle
from ml.config import ConfigError, MLConfig
from ml.data import newest_candle
from ml.dataset import Dataset, build_trade_dataset
from ml.errors import FtmlError
from ml.metrics import block_bootstrap_mean_se, row_log_loss
from ml.registry import RegistryError, calibrator_file, open_registry

logger = logging.getLogger("ftml.recalibrate")


def _naive(ts: pd.Timestamp) -> np.datetime64:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_datetime64()


def _iso(value: np.datetime64) -> str:
    return pd.Timestamp(value, tz="UTC").isoformat()


def resolved(data: Dataset, start: pd.Timestamp, now: pd.Timestamp) -> np.ndarray:
    """Indices of the rows opened after ``start`` whose outcome was known before ``now``."""
    return np.flatnonzero((data.times > _naive(start)) & (data.times < _naive(now)) & (data.label_end < _naive(now)))


def split_fit_holdout(rows: Dataset, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The newest share of the rows (by signal time) as the holdout; the older ones, minus
    those still open when the holdout starts (their outcome overlaps it), for the fit."""
    order = np.argsort(rows.times, kind="stable")
    n_hold = max(1, int(round(len(order) * holdout_fraction)))
    hold, fit = order[-n_hold:], order[:-n_hold]
    first_hold = rows.times[hold].min()
    fit = fit[rows.label_end[fit] < first_hold]
    return fit, hold


def choose_now(ft: dict[str, Any], now: str | pd.Timestamp | None) -> pd.Timestamp:
    """``now`` as given, or the end of the newest stored candle (never later than the clock)."""
    if now is not None:
        ts = pd.Timestamp(now)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    last = newest_candle(ft) + pd.Timedelta(ft["timeframe"])
    return min(last, pd.Timestamp(datetime.now(UTC)))


def recalibrate(config_path: str | Path, cfg: MLConfig, ft: dict[str, Any], strategy: str | None = None,
                now: str | pd.Timestamp | None = None, dry_run: bool = False) -> dict[str, Any]:
    """One recalibration of the production model of ``strategy``; returns the summary
    (``decision``: applied, kept, skipped or dry-run, with ``reasons``)."""
    from ml.features import FeatureEngineer
    from ml.trade_labels import strategy_name, strategy_trades

    strategy = strategy or cfg.training.strategy
    if not strategy:
        raise ConfigError("Which strategy's model should be recalibrated? Pass --strategy MyStrategy or set "
                          "ml.training.strategy.")
    settings = cfg.recalibration
    name = strategy_name(config_path, strategy)
    registry = open_registry(cfg.registry.path)
    doc = registry.read()
    entry = registry.production(name, doc) if name in doc["models"] else None
    now = choose_now(ft, now)
    summary: dict[str, Any] = {"model": name, "now": now.isoformat(), "dry_run": dry_run}
    if entry is None:
        return {**summary, "decision": "skipped", "reasons": [f"no production version of {name}"]}
    if problems := registry.verify_version(entry):
        raise RegistryError(f"{name} v{entry['id']} fails verification: {'; '.join(problems)}")
    summary.update(version=entry["id"], revision=entry.get("calibration_revision") or None)
    bundle = load_bundle(registry.version_dir(entry), calibrator_file(entry))

    # Rows the model was never fitted on: after its training block, plus the embargo.
    step = pd.Timedelta(ft["timeframe"])
    trained_to = ((entry.get("ranges") or {}).get("train") or [None, entry["train_end"]])[1]
    model_end = pd.Timestamp(trained_to) + step * cfg.training.embargo
    start = max(now - pd.Timedelta(days=settings.window_days), model_end)
    if start >= now:
        return {**summary, "decision": "skipped", "reasons": [f"no candles between the model's training block "
                                                              f"({model_end}) and now ({now})"]}
    engineer = FeatureEngineer(cfg.features, ft["timeframe"])
    timerange = f"{int(start.timestamp())}-{int(now.timestamp())}"
    run = strategy_trades(config_path, strategy, timerange, ft["pairs"], engineer=engineer)
    data = build_trade_dataset(cfg, run, min_rows=0)
    if data.feature_set_id != bundle.feature_set_id:
        raise FtmlError(f"{name} v{entry['id']} was trained on feature set {bundle.feature_set_id}; the config "
                        f"computes {data.feature_set_id}: recalibrating it would score other inputs. Retrain.")
    rows = data.take(resolved(data, start, now))
    summary["window"] = [start.isoformat(), now.isoformat()]
    summary["resolved_rows"] = len(rows)
    if len(rows) < settings.min_rows:
        return {**summary, "decision": "skipped",
                "reasons": [f"{len(rows)} resolved trades in the window (< recalibration.min_rows {settings.min_rows})"]}
    fit, hold = split_fit_holdout(rows, settings.holdout_fraction)
    p_raw = bundle.predict_raw(rows.X)
    try:
        fresh, info = calibration.revise(bundle.calibrator, p_raw[fit], rows.y[fit])
    except ValueError as err:  # one class only in the fit rows
        return {**summary, "decision": "skipped", "reasons": [str(err)]}
    current_loss = row_log_loss(rows.y[hold], bundle.calibrator.transform(p_raw[hold]))
    fresh_loss = row_log_loss(rows.y[hold], fresh.transform(p_raw[hold]))
    gain = current_loss - fresh_loss
    block = (step * max(1, int(data.info.get("horizon_candles", 1)))).as_unit("ns").to_timedelta64()
    summary.update(
        method=info["method"], choice=info, fit_rows=len(fit), holdout_rows=len(hold),
        hit_rate={"fit": float(rows.y[fit].mean()), "holdout": float(rows.y[hold].mean())},
        log_loss={"current": float(current_loss.mean()), "new": float(fresh_loss.mean()),
                  "gain": float(gain.mean()), "gain_se": block_bootstrap_mean_se(gain, rows.times[hold], block)},
    )
    if not gain.mean() > 0:
        return {**summary, "decision": "kept", "reasons": [
            f"the new calibration ({info['method']})'s holdout log loss {fresh_loss.mean():.5f} does not beat the current "
            f"{current_loss.mean():.5f}"]}
    # Every outcome the fit or the decision used: the in-sample guard extends to the newest.
    details = {"fit_end": _iso(rows.label_end.max()), "fit_start": _iso(rows.times.min()), "now": now.isoformat(),
               "method": info["method"], "a": info["a"], "b": info["b"], "fit_rows": len(fit), "holdout_rows": len(hold),
               "log_loss": summary["log_loss"], "hit_rate": summary["hit_rate"]}
    if dry_run:
        return {**summary, "decision": "dry-run", "would": "applied", "reasons": []}
    revision = registry.add_calibration(name, entry["id"], calibration.to_json(fresh), details,
                                        reason=f"ftml recalibrate: holdout log loss {fresh_loss.mean():.5f} < "
                                        f"{current_loss.mean():.5f}")
    logger.info("Recalibrated %s v%s: revision r%s (%s), holdout log loss %.5f -> %.5f; in-sample guard to %s.",
                name, entry["id"], revision["revision"], info["method"], current_loss.mean(), fresh_loss.mean(),
                details["fit_end"])
    return {**summary, "decision": "applied", "new_revision": revision["revision"], "fit_end": details["fit_end"],
            "reasons": []}
