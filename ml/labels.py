"""Triple-barrier labels: "the long trade the strategy would open on this candle wins".

Freqtrade fills a signal from candle t at the open of candle t+1, so the entry price is
``open[t+1]``. The trade then looks at candles t+1 .. t+horizon:

* take-profit: freqtrade's ROI exit is net of fees, so the price barrier sits at
  ``entry * (1 + take_profit + fee)``; the trade then earns ``take_profit`` net;
* stop-loss: freqtrade's stoploss is on price, ``entry * (1 - stop_loss)``; the trade
  loses ``stop_loss + fee``;
* a candle that touches both counts as a loss (we cannot know which came first);
* neither within the horizon: a time exit, label 0. The strategy decides it at the close
  of candle t+horizon and freqtrade fills it at the *open* of candle t+horizon+1 (on real
  candles that open differs from the previous close), so that open is the exit price.

The label is NaN where the future is not known yet (the last ``horizon + 1`` rows) or
where a time gap in the data falls inside the trade's window. tests/test_labels_vs_freqtrade.py
checks these labels against the trades freqtrade's backtesting engine really makes. Everything is vectorised with
sliding windows; there is no Python loop over rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib

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


def _window_is_finite(highs: np.ndarray, lows: np.ndarray, h: int, rows: int) -> np.ndarray:
    """True where candles t+1 .. t+h all have finite high and low (running count, O(n))."""
    bad = np.concatenate(([0], np.cumsum(~(np.isfinite(highs) & np.isfinite(lows)))))
    return (bad[1 + h : 1 + h + rows] - bad[1 : 1 + rows]) == 0


def triple_barrier(df: pd.DataFrame, cfg: LabelSettings, timeframe: str | None = None) -> pd.DataFrame:
    """Label every candle of one pair's frame (sorted by date).

    Returns a frame on ``df.index`` with ``label`` (1.0 / 0.0 / NaN), ``ret`` (the trade's
    realised net return), ``exit_offset`` (candles from signal to exit) and ``label_end``
    (the date of the last candle the outcome may depend on: the time exit's fill candle,
    used to purge splits).
    """
    missing = [c for c in ("date", "open", "high", "low", "close") if c not in df.columns]
    if missing:
        raise KeyError(f"triple_barrier needs columns {missing}; got {list(df.columns)}")
    h = cfg.horizon
    n = len(df)
    dates = pd.to_datetime(df["date"], utc=True)
    step = pd.Timedelta(timeframe) if timeframe else dates.diff().median()
    label, ret_out, offset_out = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)

    def frame() -> pd.DataFrame:
        out = pd.DataFrame({"label": label, "ret": ret_out, "exit_offset": offset_out}, index=df.index)
        out["label_end"] = dates + step * (h + 1)  # same index: aligned, stays tz-aware
        return out

    if n <= h + 1:
        return frame()

    opens, highs, lows = (df[c].to_numpy(dtype="float64") for c in ("open", "high", "low"))
    tp, sl = barrier_fractions(df, cfg)
    rows = n - h - 1  # rows whose whole horizon and time-exit fill are inside the frame
    entry = opens[1 : rows + 1]
    upper = entry * (1.0 + tp[:rows] + cfg.fee)
    lower = entry * (1.0 - sl[:rows])
    # Walk the horizon, not the rows: step k checks candle t+1+k for every row t at once,
    # keeping the first step at which each barrier was touched.
    first_tp = np.full(rows, h, dtype=np.int16)
    first_sl = np.full(rows, h, dtype=np.int16)
    for k in range(h):
        window = slice(1 + k, 1 + k + rows)
        np.minimum(first_tp, np.where(highs[window] >= upper, k, h).astype(np.int16), out=first_tp)
        np.minimum(first_sl, np.where(lows[window] <= lower, k, h).astype(np.int16), out=first_sl)

    won = first_tp < first_sl  # a same-candle double touch is a loss
    lost = (first_sl <= first_tp) & (first_sl < h)
    time_exit_ret = opens[h + 1 : rows + h + 1] / entry - 1.0 - cfg.fee
    ret = np.where(won, tp[:rows], np.where(lost, -sl[:rows] - cfg.fee, time_exit_ret))
    exit_offset = 1 + np.where(won, first_tp, np.where(lost, first_sl, h))

    # A gap inside the window means we cannot know what happened: leave it unlabelled.
    naive = dates.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    contiguous = (naive[h + 1 : rows + h + 1] - naive[:rows]) == (step * (h + 1)).to_timedelta64()
    valid = contiguous & np.isfinite(entry) & (entry > 0) & np.isfinite(tp[:rows]) & np.isfinite(ret)
    valid &= _window_is_finite(highs, lows, h, rows)
    idx = np.flatnonzero(valid)
    label[idx] = won[idx]
    ret_out[idx] = ret[idx]
    offset_out[idx] = exit_offset[idx]
    return frame()
