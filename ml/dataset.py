"""The pooled training set: one row per closed trade of the strategy, over several pairs.

Meta-labelling: the rows are the trades the strategy itself makes in freqtrade's engine
(``ml.trade_labels``), so the model learns P(win | this strategy enters here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.config import MLConfig
from ml.errors import FtmlError
from ml.features import FeatureEngineer

logger = logging.getLogger(__name__)


class TrainingDataError(FtmlError, ValueError):
    """Not enough honest data to train; the message says how much there is and what to do."""


@dataclass
class Dataset:
    X: pd.DataFrame
    y: np.ndarray
    realised: np.ndarray  # the trade's net profit ratio
    times: np.ndarray  # signal candle dates, datetime64[ns] UTC
    label_end: np.ndarray  # the last candle the outcome may depend on (purging)
    pairs: np.ndarray
    feature_set_id: str
    info: dict[str, Any] = field(default_factory=dict)
    exit_times: np.ndarray | None = None  # when the labelled trade really closed (a bot's next entry)
    sides: np.ndarray | None = None  # "long" / "short" per row (strategy trades); None: all long

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.X.iloc[idx], self.y[idx], self.realised[idx], self.times[idx], self.label_end[idx],
                       self.pairs[idx],
                       self.feature_set_id, self.info,
                       None if self.exit_times is None else self.exit_times[idx],
                       None if self.sides is None else self.sides[idx])

    def side_of_rows(self) -> np.ndarray:
        return self.sides if self.sides is not None else np.full(len(self.y), "long")

    def __len__(self) -> int:
        return len(self.y)


def _naive_ns(values: pd.Series) -> np.ndarray:
    return pd.to_datetime(values, utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")


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
    info = {"pairs": per_pair, "skipped": {}, "strategy": run.strategy, "label_source": "trades",
            "sides": sides, "timeframe": run.timeframe, "rows": n, "trades": len(run.trades),
            "unresolved_trades": run.unresolved, "horizon_candles": horizon, "label_backtest": {"key": run.key, "cache_hit": run.cache_hit},
            "feature_count": len(names), "start": str(pooled["date"].iloc[0]), "end": str(pooled["date"].iloc[-1]),
            "exits": run.info.get("exits")}
    return Dataset(
        X=pooled[names].astype(np.float64), y=pooled["label"].to_numpy(dtype=np.int64),
        realised=pooled["realised"].to_numpy(dtype=np.float64),
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
                   realised=np.array([]), times=none,
                   label_end=none, exit_times=none, pairs=np.array([], dtype=object),
                   feature_set_id=engineer.feature_set_id, info={"rows": 0}, sides=np.array([], dtype=object))
