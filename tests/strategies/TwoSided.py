import talib.abstract as ta
from freqtrade.strategy import IStrategy


class TwoSided(IStrategy):
    """Long after an RSI dip, short after an RSI spike (futures, isolated margin)."""
    INTERFACE_VERSION = 3
    timeframe = "1h"
    can_short = True
    minimal_roi = {"0": 0.03}
    stoploss = -0.03
    startup_candle_count = 50

    def populate_indicators(self, df, metadata):
        df["rsi"] = ta.RSI(df, timeperiod=14)
        return df

    def populate_entry_trend(self, df, metadata):
        df.loc[(df["rsi"] < 40) & (df["volume"] > 0), "enter_long"] = 1
        df.loc[(df["rsi"] > 60) & (df["volume"] > 0), "enter_short"] = 1
        return df

    def populate_exit_trend(self, df, metadata):
        return df
