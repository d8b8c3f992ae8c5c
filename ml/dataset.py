"""The pooled training set: features, trade-outcome labels and times, over several pairs.

Meta-labelling: with ``training.signal`` set, the rows are the candles where that base
signal fired, so the model learns P(win | the strategy would enter here). With
``signal = null`` every candle is a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.config import MLConfig
from ml.data import DataError, load_candles
from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.labels import barrier_fractions, triple_barrier
from ml.signals import SIGNAL_STARTUP_CANDLES, get_signal

logger = logging.getLogger(__name__)


class TrainingDataError(FtmlError, ValueError):
    """Not enough honest data to train; the message says how much there is and what to do."""


@dataclass
class Dataset:
    X: pd.DataFrame
    y: np.ndarray
    realised: np.ndarray  # the labelled trade's net return
    take_profit: np.ndarray  # barrier fractions per row (fixed, or from ATR)
    stop_loss: np.ndarray
    times: np.ndarray  # signal candle dates, datetime64[ns] UTC
    label_end: np.ndarray  # the last candle the outcome may depend on (purging)
    pairs: np.ndarray
    feature_set_id: str
    info: dict[str, Any] = field(default_factory=dict)
    exit_times: np.ndarray | None = None  # when the labelled trade really closed (a bot's next entry)
    sides: np.ndarray | None = None  # "long" / "short" per row (strategy trades); None: all long

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.X.iloc[idx], self.y[idx], self.realised[idx], self.take_profit[idx],
                       self.stop_loss[idx], self.times[idx], self.label_end[idx], self.pairs[idx],
                       self.feature_set_id, self.info,
                       None if self.exit_times is None else self.exit_times[idx],
                       None if self.sides is None else self.sides[idx])

    def side_of_rows(self) -> np.ndarray:
        return self.sides if self.sides is not None else np.full(len(self.y), "long")

    def __len__(self) -> int:
        return len(self.y)


def _naive_ns(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")


def pair_rows(frame: pd.DataFrame, cfg: MLConfig, engineer: FeatureEngineer, timeframe: str,
              signal: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Feature + label rows of one pair's candles, and counts of what was left out."""
    feats = engineer.transform(frame.drop(columns=["bad_row"], errors="ignore"))
    labels = triple_barrier(frame, cfg.label, timeframe)
    tp, sl = barrier_fractions(frame, cfg.label)
    startup = max(engineer.startup_candles, SIGNAL_STARTUP_CANDLES if signal else 0)
    fired = get_signal(signal)(frame).to_numpy() if signal else np.ones(len(frame), dtype=bool)
    warm = np.arange(len(frame)) >= startup
    bad = frame["bad_row"].to_numpy() if "bad_row" in frame else np.zeros(len(frame), dtype=bool)
    labelled = labels["label"].notna().to_numpy()
    usable = feats[engineer.feature_names].notna().any(axis=1).to_numpy()
    keep = fired & warm & labelled & ~bad & usable
    counts = {
        "candles": len(frame), "signal_rows": int((fired & warm).sum()), "rows": int(keep.sum()),
        "unlabelled": int((fired & warm & ~labelled).sum()), "bad_rows": int((fired & warm & bad).sum()),
    }
    rows = feats.loc[keep, ["date", *engineer.feature_names]].copy()
    for column, source in (("label", "label"), ("realised", "ret"), ("label_end", "label_end")):
        rows[column] = labels[source][keep]  # same index: aligned, label_end stays tz-aware
    rows["take_profit"], rows["stop_loss"] = tp[keep], sl[keep]
    rows["exit_time"] = rows["date"] + pd.Timedelta(timeframe) * labels["exit_offset"][keep]
    return rows, counts


def build_dataset(cfg: MLConfig, datadir: str | Path, pairs: list[str], timeframe: str,
                  timerange: str | None = None, signal: str | None = None,
                  data_format: str = "feather") -> Dataset:
    """Pool every pair's rows, sorted by time. Refuses when too few rows remain."""
    engineer = FeatureEngineer(cfg.features, timeframe)
    frames, report = load_candles(datadir, pairs, timeframe, timerange, data_format)
    parts, per_pair, skipped = [], {}, {}
    for rep in report.pairs:
        if rep.pair not in frames or frames[rep.pair].empty:
            skipped[rep.pair] = "; ".join(rep.notes) or "no candles"
            continue
        if rep.problems.get("duplicate_date") or rep.problems.get("unsorted_date"):
            skipped[rep.pair] = "duplicate or unsorted dates: fix the file (see `ftml data check`)"
            continue
        rows, counts = pair_rows(frames[rep.pair], cfg, engineer, timeframe, signal)
        rows["pair"] = rep.pair
        parts.append(rows)
        per_pair[rep.pair] = counts
    for pair, why in skipped.items():
        logger.warning("Training without %s: %s", pair, why)
    if not parts:
        raise DataError(f"No usable candles for {pairs} at {timeframe} in {datadir}: {skipped}")
    pooled = pd.concat(parts, ignore_index=True).sort_values(["date", "pair"], kind="stable", ignore_index=True)
    n = len(pooled)
    info = {"pairs": per_pair, "skipped": skipped, "signal": signal, "timeframe": timeframe,
            "timerange": timerange, "rows": n, "feature_count": len(engineer.feature_names)}
    if n < cfg.training.min_samples:
        by_pair = ", ".join(f"{pair}: {counts['rows']}" for pair, counts in per_pair.items())
        raise TrainingDataError(
            f"Only {n} labelled rows ({by_pair}) "
            f"with signal={signal!r}; need training.min_samples={cfg.training.min_samples} to split "
            "honestly. Use a longer timerange, more pairs, or training.signal = null (all candles)."
        )
    if pooled["label"].nunique() < 2:
        raise TrainingDataError(f"All {n} labels are {pooled['label'].iloc[0]:.0f}: the barriers never/always hit.")
    info["start"], info["end"] = str(pooled["date"].iloc[0]), str(pooled["date"].iloc[-1])
    return Dataset(
        X=pooled[engineer.feature_names].astype(np.float64),
        y=pooled["label"].to_numpy(dtype=np.int64),
        realised=pooled["realised"].to_numpy(dtype=np.float64),
        take_profit=pooled["take_profit"].to_numpy(dtype=np.float64),
        stop_loss=pooled["stop_loss"].to_numpy(dtype=np.float64),
        times=_naive_ns(pooled["date"]),
        label_end=_naive_ns(pooled["label_end"]),
        exit_times=_naive_ns(pooled["exit_time"]),
        pairs=pooled["pair"].to_numpy(),
        feature_set_id=engineer.feature_set_id,
        info=info,
    )


def trade_rows(run, engineer: FeatureEngineer, min_profit: float, with_side: bool) -> tuple[pd.DataFrame, dict]:
    """One row per closed trade of a ``TradeRun``: the features of its signal candle (the
    candle before the fill), the side, the label (net profit ratio > ``min_profit``), the
    realised return, and the close time as ``label_end``."""
    from ml.gate import SIDE_FEATURE

    step = pd.Timedelta(run.timeframe)
    parts, per_pair = [], {}
    for pair, trades in run.trades.groupby("pair", sort=True):
        candles = run.candles.get(pair)
        if candles is None or candles.empty:
            per_pair[pair] = {"trades": len(trades), "rows": 0, "no_features": len(trades)}
            continue
        if pair in run.indicators:  # the strategy's own columns named by include_columns
            candles = candles.merge(run.indicators[pair], on="date", how="left")
        feats = engineer.features(candles, pair)
        feats.index = pd.DatetimeIndex(pd.to_datetime(candles["date"], utc=True))
        signal = pd.to_datetime(trades["open_date"], utc=True) - step
        rows = feats.reindex(signal.to_numpy())
        rows.index = trades.index
        usable = rows[engineer.feature_names].notna().any(axis=1).to_numpy()
        rows = rows.loc[usable]
        kept = trades.loc[usable]
        rows.insert(0, "date", signal[usable].to_numpy())
        if with_side:
            rows[SIDE_FEATURE] = kept["is_short"].astype(np.float64).to_numpy()
        rows["realised"] = kept["profit_ratio"].astype(np.float64).to_numpy()
        rows["label"] = (rows["realised"] > min_profit).astype(np.int64)
        rows["label_end"] = pd.to_datetime(kept["close_date"], utc=True).to_numpy()
        rows["pair"] = pair
        rows["side"] = np.where(kept["is_short"].to_numpy(dtype=bool), "short", "long")
        parts.append(rows)
        per_pair[pair] = {"trades": len(trades), "rows": int(usable.sum()), "no_features": int((~usable).sum())}
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), per_pair


NON_FEATURES = ("date", "realised", "label", "label_end", "pair", "side")


def build_trade_dataset(cfg: MLConfig, run, min_rows: int | None = None) -> Dataset:
    """The pooled training set of a strategy's own trades (``ml.trade_labels.TradeRun``).

    Features are the FeatureEngineer's on the candles the strategy saw, plus ``side_short``
    when the strategy can short; refuses, with the numbers, when too few trades remain.
    """
    from ml.gate import SIDE_FEATURE

    engineer = FeatureEngineer(cfg.features, run.timeframe)
    with_side = bool(run.can_short)
    pooled, per_pair = trade_rows(run, engineer, cfg.label.min_profit, with_side)
    n = len(pooled)
    need = cfg.training.min_samples if min_rows is None else min_rows
    counts = ", ".join(f"{p}: {c['rows']}" for p, c in per_pair.items()) or "none"
    if n < need:
        raise TrainingDataError(
            f"{run.strategy} made {len(run.trades)} closed trades in the range ({run.unresolved} still open at its "
            f"end), {n} with features ({counts}); need training.min_samples={need}. Use a longer timerange or "
            "more pairs.")
    if n == 0:
        return empty_dataset(engineer, with_side)
    if need and pooled["label"].nunique() < 2:
        raise TrainingDataError(f"All {n} trades of {run.strategy} are {'wins' if pooled['label'].iloc[0] else 'losses'}"
                                f" at min_profit {cfg.label.min_profit}: nothing to learn.")
    pooled = pooled.sort_values(["date", "pair"], kind="stable", ignore_index=True)
    user = sorted(set(pooled.columns) - set(engineer.feature_names) - set(NON_FEATURES) - {SIDE_FEATURE})
    if cfg.features.include_columns and not user:
        raise TrainingDataError(f"ml.features.include_columns {cfg.features.include_columns} matches no numeric "
                                f"column of {run.strategy}'s populate_indicators.")
    names = [*engineer.feature_names, *user, *([SIDE_FEATURE] if with_side else [])]
    sides = sorted(set(pooled["side"]))
    durations = (pd.to_datetime(pooled["label_end"], utc=True) - pd.to_datetime(pooled["date"], utc=True))
    horizon = max(1, int(np.ceil(durations.median() / pd.Timedelta(run.timeframe))))
    info = {"pairs": per_pair, "skipped": {}, "signal": None, "strategy": run.strategy, "label_source": "trades",
            "sides": sides, "timeframe": run.timeframe, "rows": n, "trades": len(run.trades),
            "unresolved_trades": run.unresolved, "horizon_candles": horizon, "label_backtest": {"key": run.key, "cache_hit": run.cache_hit},
            "feature_count": len(names), "start": str(pooled["date"].iloc[0]), "end": str(pooled["date"].iloc[-1])}
    nan = np.full(n, np.nan)
    return Dataset(
        X=pooled[names].astype(np.float64), y=pooled["label"].to_numpy(dtype=np.int64),
        realised=pooled["realised"].to_numpy(dtype=np.float64), take_profit=nan, stop_loss=nan,
        times=_naive_ns(pooled["date"]), label_end=_naive_ns(pooled["label_end"]),
        exit_times=_naive_ns(pooled["label_end"]), pairs=pooled["pair"].to_numpy(),
        feature_set_id=engineer.feature_set_id, info=info, sides=pooled["side"].to_numpy(dtype=object),
    )


def empty_dataset(engineer: FeatureEngineer, with_side: bool) -> Dataset:
    """No rows (a scoring window without trades): every array empty, columns as trained."""
    from ml.gate import SIDE_FEATURE

    names = [*engineer.feature_names, *([SIDE_FEATURE] if with_side else [])]
    none = np.array([], dtype="datetime64[ns]")
    return Dataset(X=pd.DataFrame(columns=names, dtype=np.float64), y=np.array([], dtype=np.int64),
                   realised=np.array([]), take_profit=np.array([]), stop_loss=np.array([]), times=none,
                   label_end=none, exit_times=none, pairs=np.array([], dtype=object),
                   feature_set_id=engineer.feature_set_id, info={"rows": 0}, sides=np.array([], dtype=object))
