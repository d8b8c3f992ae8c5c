"""Triple-barrier labels: "the long trade the strategy would open on this candle wins".

Freqtrade fills a signal from candle t at the open of candle t+1, so the entry price is
``open[t+1]``. The trade then looks at candles t+1 .. t+horizon:

* take-profit: freqtrade's ROI exit is net of fees, so the price barrier sits at
  ``entry * (1 + take_profit + fee)``; the trade then earns ``take_profit`` net;
* stop-loss: freqtrade's stoploss is on price, ``entry * (1 - stop_loss)``; the trade
  loses ``stop_loss + fee``;
* a candle that touches both counts as a loss (we cannot know which came first);
* neither within the horizon: a time exit at ``close[t+horizon]``, label 0.

The label is NaN where the future is not known yet (the last ``horizon`` rows) or where a
time gap in the data falls inside the trade's window. Everything is vectorised with
sliding windows; there is no Python loop over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib
from numpy.lib.stride_tricks import sliding_window_view

from ml.config import LabelSettings

LABEL_COLUMNS = ("label", "ret", "exit_offset", "label_end")


def barrier_fractions(df: pd.DataFrame, cfg: LabelSettings) -> tuple[np.ndarray, np.ndarray]:
    """Take-profit and stop-loss as fractions of the entry price, per row."""
    n = len(df)
    if cfg.barrier == "fixed":
        return np.full(n, cfg.take_profit), np.full(n, cfg.stop_loss)
    high, low, close = (df[c].to_numpy(dtype="float64") for c in ("high", "low", "close"))
    atr_frac = talib.ATR(high, low, close, timeperiod=cfg.atr_period) / close
    return cfg.take_profit * atr_frac, cfg.stop_loss * atr_frac


def _first_true(hits: np.ndarray, horizon: int) -> np.ndarray:
    """Index of the first True per row, ``horizon`` where there is none."""
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), first, horizon)


def triple_barrier(df: pd.DataFrame, cfg: LabelSettings, timeframe: str | None = None) -> pd.DataFrame:
    """Label every candle of one pair's frame (sorted by date).

    Returns a frame on ``df.index`` with ``label`` (1.0 / 0.0 / NaN), ``ret`` (the trade's
    realised net return), ``exit_offset`` (candles from signal to exit) and ``label_end``
    (the date of the last candle the outcome may depend on, used to purge splits).
    """
    missing = [c for c in ("date", "open", "high", "low", "close") if c not in df.columns]
    if missing:
        raise KeyError(f"triple_barrier needs columns {missing}; got {list(df.columns)}")
    h = cfg.horizon
    n = len(df)
    out = pd.DataFrame(index=df.index)
    out["label"] = np.nan
    out["ret"] = np.nan
    out["exit_offset"] = np.nan
    dates = pd.to_datetime(df["date"], utc=True)
    step = pd.Timedelta(timeframe) if timeframe else dates.diff().median()
    out["label_end"] = dates + step * h
    if n <= h:
        return out

    opens, highs, lows, closes = (df[c].to_numpy(dtype="float64") for c in ("open", "high", "low", "close"))
    tp, sl = barrier_fractions(df, cfg)
    rows = n - h  # rows whose whole horizon is inside the frame
    entry = opens[1 : rows + 1]
    upper = entry * (1.0 + tp[:rows] + cfg.fee)
    lower = entry * (1.0 - sl[:rows])
    # Window k of row t covers candle t+1+k, k = 0 .. h-1.
    win_high = sliding_window_view(highs[1:], h)[:rows]
    win_low = sliding_window_view(lows[1:], h)[:rows]
    first_tp = _first_true(win_high >= upper[:, None], h)
    first_sl = _first_true(win_low <= lower[:, None], h)

    won = first_tp < first_sl  # a same-candle double touch is a loss
    lost = (first_sl <= first_tp) & (first_sl < h)
    time_exit_ret = closes[h : rows + h] / entry - 1.0 - cfg.fee
    ret = np.where(won, tp[:rows], np.where(lost, -sl[:rows] - cfg.fee, time_exit_ret))
    exit_offset = 1 + np.where(won, first_tp, np.where(lost, first_sl, h - 1))

    # A gap inside the window means we cannot know what happened: leave it unlabelled.
    naive = dates.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    contiguous = (naive[h : rows + h] - naive[:rows]) == (step * h).to_timedelta64()
    valid = contiguous & np.isfinite(entry) & (entry > 0) & np.isfinite(tp[:rows]) & np.isfinite(ret)
    valid &= ~np.isnan(win_high).any(axis=1) & ~np.isnan(win_low).any(axis=1)
    idx = np.flatnonzero(valid)
    out.iloc[idx, 0] = won[idx].astype("float64")
    out.iloc[idx, 1] = ret[idx]
    out.iloc[idx, 2] = exit_offset[idx].astype("float64")
    return out
