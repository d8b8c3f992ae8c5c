"""The entry rules of the example strategies (TrendPullback, MeanReversion): ordinary TA
rules that propose trades. Their gated twins keep an entry only where the model's expected
value is positive; the model learns from the trades these rules make (ml.trade_labels).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
import talib
from freqtrade.exchange import timeframe_to_seconds

SignalFn = Callable[[pd.DataFrame], pd.Series]


def _good_close(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Close prices with bad candles (NaN, inf, <= 0) bridged by the previous good close,
    and the mask of bad candles. TA-Lib's EMA/RSI carry a NaN forward for ever, so one
    broken candle would otherwise silence the signal for the rest of the frame."""
    close = df["close"].to_numpy(dtype="float64")
    bad = ~np.isfinite(close) | (close <= 0)
    if bad.any():
        close = pd.Series(np.where(bad, np.nan, close)).ffill().to_numpy()
    return close, bad


def trend_pullback(df: pd.DataFrame) -> pd.Series:
    """Long when the trend is up (EMA50 > EMA200) and RSI(14) dips below 40."""
    close, bad = _good_close(df)
    ema_fast = talib.EMA(close, timeperiod=50)
    ema_slow = talib.EMA(close, timeperiod=200)
    rsi = talib.RSI(close, timeperiod=14)
    fired = (ema_fast > ema_slow) & (close > ema_slow) & (rsi < 40) & ~bad
    return pd.Series(fired, index=df.index, name="trend_pullback")


def mean_reversion(df: pd.DataFrame) -> pd.Series:
    """Long when the close falls below the lower Bollinger band (20, 2) and RSI(14) < 35."""
    close, bad = _good_close(df)
    _, _, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    rsi = talib.RSI(close, timeperiod=14)
    fired = (close < lower) & (rsi < 35) & ~bad
    return pd.Series(fired, index=df.index, name="mean_reversion")


SIGNALS: dict[str, SignalFn] = {"trend_pullback": trend_pullback, "mean_reversion": mean_reversion}
# Candles the signals need before their values stop depending on the frame start:
# EMA200 keeps (1 - 2/201)^800 ~ 3e-4 of its seed after 800 candles.
SIGNAL_STARTUP_CANDLES = 800


def time_exit_due(open_date: datetime, now: datetime, horizon: int, timeframe: str) -> bool:
    """True once a trade has been open for ``horizon`` candles (a strategy's time exit)."""
    return (now - open_date).total_seconds() >= horizon * timeframe_to_seconds(timeframe)
