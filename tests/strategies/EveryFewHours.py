"""A test strategy whose entries ignore the market: long every few hours, fixed exits.

Its trades are an unbiased sample of the market, so a model trained on them sees whatever
edge the synthetic market plants (or none), at the strength the market has. Exits: ROI 3%,
stoploss 3%, and a time exit after 24 candles.
"""

from datetime import datetime

from freqtrade.strategy import IStrategy

from ml.signals import time_exit_due


class EveryFewHours(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    minimal_roi = {"0": 0.03}
    stoploss = -0.03
    use_exit_signal = True  # custom_exit (the time exit) only runs with exit signals on
    startup_candle_count = 0
    every_hours = 6
    horizon_candles = 24

    def populate_indicators(self, df, metadata):
        return df

    def populate_entry_trend(self, df, metadata):
        df.loc[(df["date"].dt.hour % self.every_hours == 0) & (df["volume"] > 0), "enter_long"] = 1
        return df

    def populate_exit_trend(self, df, metadata):
        return df

    def custom_exit(self, pair: str, trade, current_time: datetime, current_rate: float, current_profit: float,
                    **kwargs):
        if time_exit_due(trade.open_date_utc, current_time, self.horizon_candles, self.timeframe):
            return "time_exit"
        return None
