"""Plain trend-pullback strategy, no ML: the un-gated twin of TrendPullbackML.

Entry: EMA50 above EMA200 and an RSI dip (``ml.signals.trend_pullback``).
Exits: take-profit via ROI, stop-loss, and a time exit after ``horizon_candles``. Its gated
twin TrendPullbackML keeps all of them and only removes entries.
"""

from datetime import datetime

from freqtrade.strategy import IStrategy
from pandas import DataFrame

from ml.signals import SIGNAL_STARTUP_CANDLES, time_exit_due, trend_pullback


class TrendPullback(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    can_short = False
    minimal_roi = {"0": 0.03}
    stoploss = -0.03
    use_exit_signal = True  # custom_exit (the time exit) only runs with exit signals on
    process_only_new_candles = True
    startup_candle_count = SIGNAL_STARTUP_CANDLES
    horizon_candles = 24  # candles after which an open trade is closed (the label's horizon)
    base_signal = staticmethod(trend_pullback)

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe["base_signal"] = self.base_signal(dataframe)
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["base_signal"] & (dataframe["volume"] > 0), "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return dataframe

    def custom_exit(self, pair: str, trade, current_time: datetime, current_rate: float,
                    current_profit: float, **kwargs):
        if time_exit_due(trade.open_date_utc, current_time, self.horizon_candles, self.timeframe):
            return "time_exit"
        return None
