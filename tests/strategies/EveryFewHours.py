"""A test strategy whose entries ignore the market: long every few hours, fixed exits.

Its trades are an unbiased sample of the market, so a model trained on them sees whatever
edge the synthetic market plants (or none), at the strength the market has. Exits: ROI 3%,
stoploss 3%, and after 24 hours at any price: the ROI table's "1440": -1, freqtrade's own
time exit (24 candles at 1h, the timeframe the tests use). A ``custom_exit`` did the same
at twice the label-backtest time: the engine calls it for every open trade on every candle.
"""

from freqtrade.strategy import IStrategy


class EveryFewHours(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    minimal_roi = {"0": 0.03, "1440": -1}
    stoploss = -0.03
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
