"""The walk-forward report: per step and overall, out of sample.

For each step's trading window, the strategy's own trades opened in it (its label backtest
over the whole timerange, every signal a trade, closed before the end) are scored with the
version and calibration revision in production then: AUC, log loss against the log loss of
the constant base-rate forecast the model knew (its fitted base rate), Brier skill,
calibration-in-the-large with its SE, Spiegelhalter Z. Next to them, the decision and why,
and the trades and profit of the one backtest, gated vs un-gated. Two plots: calibration
over time and cumulative profit (PNG, and W&B when tracking is on). ``predictions.csv``:
every scored trade with the probability that scored it (step, version, revision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from ml import tracking
from ml.bundle import load_bundle
from ml.dataset import build_trade_dataset
from ml.features import FeatureEngineer
from ml.metrics import evaluate
from ml.predictor import ProductionModel


def _naive(ts: str | pd.Timestamp) -> np.datetime64:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None).to_datetime64()


def _forecasts(bundle, rows, idx: np.ndarray) -> tuple:
    """One model's forecasts on rows ``idx``: (idx, raw p, calibrated p, the constant base rate
    it knew, per-row win/loss returns)."""
    from ml.train import per_row_outcomes

    X = rows.X.iloc[idx][bundle.feature_names].to_numpy(dtype=np.float64)
    p_raw = bundle.predict_raw(X)
    fitted = bundle.manifest.get("metrics", {}).get("fitted_base_rate")
    base = np.full(len(idx), fitted if fitted is not None else np.nan)
    sides = rows.side_of_rows()[idx]
    outcomes = per_row_outcomes({s: bundle.outcome_returns(s) for s in set(sides)}, sides)
    return idx, p_raw, bundle.calibrator.transform(p_raw), base, outcomes


def _scores(rows, forecasts: tuple, margin: float, span: np.timedelta64) -> dict[str, Any]:
    """The out-of-sample figures of one block of rows (a note where there are too few)."""
    idx, p_raw, p, base, outcomes = forecasts
    y = rows.y[idx]
    if len(y) < 10 or len(set(y)) < 2:
        return {"rows": int(len(y)), "note": "too few resolved trades (or one class only) to score"}
    rep = evaluate(y, p_raw, p, rows.realised[idx], outcomes, margin, rows.times[idx], span, rows.exit_times[idx],
                   rows.pairs[idx], min_trades=0)
    cal = rep["calibrated"]
    return {"rows": rep["rows"], "auc": rep["auc"], "auc_se": rep["auc_se"], "log_loss": rep["log_loss"],
            "base_rate_log_loss": float(log_loss(y, np.clip(base, 1e-6, 1 - 1e-6), labels=[0, 1])),
            "brier_skill": rep["brier_skill"], "hit_rate": rep["base_rate"], "mean_p": rep["mean_p"],
            "calibration_in_the_large": cal["calibration_in_the_large"],
            "calibration_in_the_large_se": cal["calibration_in_the_large_se"],
            "spiegelhalter_z": cal["spiegelhalter_z_effective"]}


def _pooled(parts: list[tuple], rows, margin: float, span: np.timedelta64) -> dict[str, Any]:
    """One score over every step's rows, each scored by its own step's model."""
    outcomes = {k: np.concatenate([p[4][k] for p in parts]) for k in ("win", "loss")}
    pooled = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
    return _scores(rows, (*pooled, outcomes), margin, span)


def _prediction_rows(rows, forecasts: tuple, rec: dict[str, Any]) -> pd.DataFrame:
    """The step's scored trades: signal candle, pair, side, outcome, and the production
    model's probability (the version and calibration revision that scored it)."""
    idx, p_raw, p = forecasts[:3]
    return pd.DataFrame({"step": rec["step"], "pair": rows.pairs[idx],
                         "date": pd.DatetimeIndex(rows.times[idx]).tz_localize("UTC"),
                         "side": rows.side_of_rows()[idx], "label": rows.y[idx].astype(int),
                         "version": rec["production"], "revision": rec["revision"], "p_raw": p_raw, "p": p})


def _trades(stats: dict[str, Any], strategy: str) -> pd.DataFrame:
    trades = pd.DataFrame(stats[strategy]["trades"])
    if trades.empty:
        return pd.DataFrame(columns=["open_date", "close_date", "profit_ratio", "profit_abs"])
    for col in ("open_date", "close_date"):
        trades[col] = pd.to_datetime(trades[col], utc=True)
    return trades


def _money(trades: pd.DataFrame) -> dict[str, Any]:
    return {"trades": int(len(trades)), "profit_abs": float(trades["profit_abs"].sum()),
            "mean_profit_ratio": float(trades["profit_ratio"].mean()) if len(trades) else None}


def report(wf, config_path: Path, records: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
    from ml.trade_labels import strategy_trades

    engineer = FeatureEngineer(wf.cfg.features, wf.ft["timeframe"])
    run = strategy_trades(config_path, wf.strategy, f"{int(wf.start.timestamp())}-{int(wf.end.timestamp())}",
                          wf.ft["pairs"], engineer=engineer)
    rows = build_trade_dataset(wf.cfg, run, min_rows=0)
    span = (pd.Timedelta(wf.ft["timeframe"]) * rows.info.get("horizon_candles", 1)).as_unit("ns").to_timedelta64()
    gated, plain = _trades(stats, wf.gated), _trades(stats, wf.strategy)
    loaded: dict[tuple, ProductionModel] = {}
    parts, steps, challengers, predictions = [], [], [], []
    for rec in records:
        start, until = pd.Timestamp(rec["moment"]), pd.Timestamp(rec["until"])
        idx = np.flatnonzero((rows.times >= _naive(start)) & (rows.times < _naive(until)))
        in_window = {name: t[(t["open_date"] >= start) & (t["open_date"] < until)] for name, t in
                     (("gated", gated), ("ungated", plain))}
        step = {k: rec[k] for k in ("step", "moment", "until", "decision", "reasons", "production", "revision")}
        step["backtest"] = {name: _money(t) for name, t in in_window.items()}
        if rec["production"] is not None and len(idx):
            key = (rec["production"], rec["revision"])
            if key not in loaded:
                loaded[key] = ProductionModel.load(wf.store, wf.name, engineer, *key)
            parts.append(_forecasts(loaded[key].bundle, rows, idx))  # at its revision's calibrator
            step["scores"] = _scores(rows, parts[-1], wf.cfg.gate.ev_margin, span)
            predictions.append(_prediction_rows(rows, parts[-1], rec))
        else:
            step["scores"] = {"rows": int(len(idx)), "note": "no model in production: no entries"}
        if len(idx):  # the step's challenger on the same window, promoted or not: the pipeline's honesty
            bundle = load_bundle(wf.cache / rec["challenger_training"]["cache_key"] / "bundle")
            challengers.append(_forecasts(bundle, rows, idx))
            step["challenger_scores"] = _scores(rows, challengers[-1], wf.cfg.gate.ev_margin, span)
        steps.append(step)
    overall: dict[str, Any] = {"backtest": {"gated": _money(gated), "ungated": _money(plain)}}
    if parts:
        overall["scores"] = _pooled(parts, rows, wf.cfg.gate.ev_margin, span)
    if challengers:
        overall["challenger_scores"] = _pooled(challengers, rows, wf.cfg.gate.ev_margin, span)
    signals = overall["backtest"]["ungated"]["trades"]
    overall["gate_share"] = overall["backtest"]["gated"]["trades"] / signals if signals else None
    overall["promotions"] = sum(r["decision"] == "promoted" for r in records)
    if predictions:  # every scored trade, for a look of one's own (e.g. against an oracle)
        pd.concat(predictions, ignore_index=True).to_csv(wf.folder / "predictions.csv", index=False)
    images = {"calibration_over_time": calibration_over_time(steps, wf.folder / "calibration_over_time.png"),
              "cumulative_profit": cumulative_profit(gated, plain, wf.gated, wf.strategy,
                                                     wf.folder / "cumulative_profit.png")}
    result = {"model": wf.name, "strategy": wf.strategy, "gated_strategy": wf.gated,
              "timerange": [wf.start.isoformat(), wf.end.isoformat()], "steps": steps, "overall": overall,
              "decisions": records,
              "plots": {k: str(v) for k, v in images.items()}, "folder": str(wf.folder),
              "predictions": str(wf.folder / "predictions.csv") if predictions else None}
    tracker = tracking.start(wf.tracking, {"walkforward": {"model": wf.name, "steps": len(steps),
                                                           "timerange": result["timerange"]}},
                             name=f"walkforward-{wf.name}", job_type="walkforward", group=wf.name,
                             tags=[wf.name, wf.strategy, "walkforward"])
    tracker.log_trials([{"step": s["step"], **{k: v for k, v in s["scores"].items() if isinstance(v, float)}}
                        for s in steps])
    tracker.log_metrics(overall)
    tracker.log_images(images)
    tracker.finish()
    result["tracking"] = tracker.link
    return result


def calibration_over_time(steps: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    scored = [s for s in steps if "mean_p" in s["scores"]]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if scored:
        x = [pd.Timestamp(s["moment"]).tz_localize(None) for s in scored]
        mean_p = np.array([s["scores"]["mean_p"] for s in scored])
        hit = np.array([s["scores"]["hit_rate"] for s in scored])
        se = np.array([s["scores"]["calibration_in_the_large_se"] for s in scored])
        ax.plot(x, mean_p, marker="o", label="mean predicted p")
        ax.errorbar(x, hit, yerr=2 * se, marker="s", capsize=3, label="observed win rate ±2 SE")
    else:
        ax.text(0.5, 0.5, "no step had a model in production", ha="center", va="center", transform=ax.transAxes)
    return _dated(fig, ax, "step (start of its trading window)", "probability",
                  "Calibration over time: each step's model on its own trading window", path)


def cumulative_profit(gated: pd.DataFrame, plain: pd.DataFrame, gated_name: str, plain_name: str,
                      path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for trades, label in ((plain, f"{plain_name} (un-gated)"), (gated, f"{gated_name} (gated)")):
        if len(trades):
            ordered = trades.sort_values("close_date")
            ax.step(ordered["close_date"].dt.tz_localize(None), ordered["profit_abs"].cumsum(), where="post",
                    label=f"{label}: {len(trades)} trades")
    ax.axhline(0, color="grey", linewidth=0.8)
    return _dated(fig, ax, "close date", "cumulative profit (stake currency)",
                  "One backtest over the walk-forward: gated vs un-gated", path)


def _dated(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, legend and date ticks of a plot over time, then the PNG."""
    from ml.plots import _save

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _save(fig, path)
