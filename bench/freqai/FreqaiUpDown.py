"""freqtrade's own FreqaiExampleStrategy as a spot up/down classifier, for bench/bench_freqai.py.

The features and entry logic are the template's; only the target is a class ("up" when the
close ``label_period_candles`` ahead is higher) and shorts are off. Each pair's out-of-sample
probabilities are written to ``FTML_FREQAI_PREDICTIONS`` so the bench scores them.
"""

import os
from pathlib import Path

import numpy as np
from freqtrade.templates.FreqaiExampleStrategy import FreqaiExampleStrategy
from pandas import DataFrame


class FreqaiUpDown(FreqaiExampleStrategy):
    can_short = False

    def set_freqai_targets(self, dataframe: DataFrame, metadata: dict, **kwargs) -> DataFrame:
        self.freqai.class_names = ["down", "up"]
        ahead = self.freqai_info["feature_parameters"]["label_period_candles"]
        dataframe["&s-up_or_down"] = np.where(dataframe["close"].shift(-ahead) > dataframe["close"], "up", "down")
        return dataframe

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        dataframe = self.freqai.start(dataframe, metadata, self)
        folder = os.environ.get("FTML_FREQAI_PREDICTIONS")
        if folder and "up" in dataframe:
            name = metadata["pair"].replace("/", "_") + ".feather"
            dataframe[["date", "close", "up", "do_predict"]].reset_index(drop=True).to_feather(Path(folder) / name)
        return dataframe

    def populate_entry_trend(self, df: DataFrame, metadata: dict) -> DataFrame:
        df.loc[(df["do_predict"] == 1) & (df["up"] > 0.55), ["enter_long", "enter_tag"]] = (1, "up")
        return df

    def populate_exit_trend(self, df: DataFrame, metadata: dict) -> DataFrame:
        df.loc[(df["do_predict"] == 1) & (df["up"] < 0.5), "exit_long"] = 1
        return df
