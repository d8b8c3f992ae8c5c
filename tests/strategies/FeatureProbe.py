"""Test-only strategy: every indicator comes from the FeatureEngineer, and entries depend on
features, so freqtrade's lookahead- and recursive-analysis exercise all of them."""

from freqtrade.strategy import IStrategy
from pandas import DataFrame

from ml.features import FeatureEngineer


class FeatureProbe(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1h"
    minimal_roi = {"0": 0.03}
    stoploss = -0.03
    process_only_new_candles = True
    engineer = FeatureEngineer(timeframe="1h")
    startup_candle_count = engineer.startup_candles

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return self.engineer.transform(dataframe)

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dip = (dataframe["f_zscore_14"] < -1.0) & (dataframe["f_htf_4h_rsi_14"] > 0.45)
        dataframe.loc[dip & (dataframe["f_rel_volume_14"] > -1.0), "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe.loc[dataframe["f_rsi_6"] > 0.8, "exit_long"] = 1
        return dataframe

