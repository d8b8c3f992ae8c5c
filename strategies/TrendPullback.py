"""Plain trend-pullback strategy, no ML: the un-gated twin of the ML-gated version.

Entry: EMA50 above EMA200 and an RSI dip (``ml.signals.trend_pullback``).
Exits: take-profit via ROI, stop-loss, and a time exit after ``horizon`` candles, the
same barriers the ML label uses by default (``"ml" -> "label"`` in config.json).
"""

from datetime import datetime

from freqtrade.exchange import timeframe_to_minutes
from freqtrade.strategy import IStrategy
from pandas import DataFrame

from ml.signals import SIGNAL_STARTUP_CANDLES, trend_pullback


class TrendPullback(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    can_short = False
    minimal_roi = {"0": 0.03}
    stoploss = -0.03
    process_only_new_candles = True
    startup_candle_count = SIGNAL_STARTUP_CANDLES
    # Candles after which an open trade is closed at market (the label's horizon).
    horizon_candles = 24

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["base_signal"] = trend_pullback(dataframe)
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["base_signal"] & (dataframe["volume"] > 0), "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return dataframe

    def custom_exit(self, pair: str, trade, current_time: datetime, current_rate: float,
                    current_profit: float, **kwargs):
        held_minutes = (current_time - trade.open_date_utc).total_seconds() / 60
        if held_minutes >= self.horizon_candles * timeframe_to_minutes(self.timeframe):
            return "time_exit"
        return None
