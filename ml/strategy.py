"""MLGatedStrategy: a freqtrade IStrategy whose entries need a positive expected value.

A subclass names a base signal (``signal_name``) from ``ml.signals``. Each candle gets:

* the FeatureEngineer's features (one vectorised transform of the whole frame);
* ``ml_proba``: the production model's calibrated P(win), for the whole frame at once;
* ``ml_ev = p*tp - (1-p)*sl - fee`` with the barriers the model was trained on;
* ``enter_long`` = base signal AND ``ml_ev > ev_margin`` (a hyperoptable buy parameter)
  AND the candle is after the model's ``train_end`` + embargo (in-sample guard).

Exits use the model's own barriers: ROI = take-profit, stoploss = stop-loss, and a time
exit after ``horizon`` candles, so what was predicted is what is traded.

It **fails closed**: no model, a bad checksum, a feature mismatch or a failing
prediction means no entries (one log line per cause), while open trades keep their
exits. In dry-run/live it notices a newly promoted model with one stat() per new candle
and switches without a restart; a broken new model is refused and the old one kept.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from freqtrade.enums import RunMode
from freqtrade.strategy import DecimalParameter, IStrategy

from ml.config import from_dict
from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.metrics import expected_value
from ml.predictor import ProductionModel
from ml.signals import SIGNAL_STARTUP_CANDLES, get_signal, time_exit_due

logger = logging.getLogger(__name__)
LIVE_MODES = (RunMode.DRY_RUN, RunMode.LIVE)


class MLGatedStrategy(IStrategy):
    INTERFACE_VERSION = 3
    can_short = False
    timeframe = "1h"
    process_only_new_candles = True
    use_exit_signal = True  # custom_exit (the time exit) only runs with exit signals on
    # Replaced by the production model's barriers in bot_start (and by config "ml.label"
    # until a model is there), so open trades always have exits.
    minimal_roi = {"0": 0.03}
    stoploss = -0.03

    signal_name = "trend_pullback"
    model_name: str | None = None  # default: the signal's name

    ev_margin = DecimalParameter(-0.01, 0.02, default=0.0, decimals=3, space="buy", optimize=True, load=True)

    plot_config = {
        "main_plot": {},
        "subplots": {
            "ML probability": {"ml_proba": {"color": "blue"}},
            "ML expected value": {"ml_ev": {"color": "green", "type": "bar"}},
        },
    }

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.ml = from_dict(config.get("ml"), source="config 'ml' section")
        self.engineer = FeatureEngineer(self.ml.features, config.get("timeframe", self.timeframe))
        self.startup_candle_count = max(self.engineer.startup_candles, SIGNAL_STARTUP_CANDLES)
        self.model: ProductionModel | None = None
        self.model_name = self.model_name or self.signal_name
        self.horizon = self.ml.label.horizon
        self._apply_barriers(self.ml.label.model_dump(), loaded=False)
        self._said: set[str] = set()
        self._last_check: pd.Timestamp | None = None

    # ------------------------------------------------------------------ model lifecycle
    def _say(self, key: str, message: str, *args, level: int = logging.WARNING) -> None:
        """Log a cause once, not once per candle."""
        if key not in self._said:
            self._said.add(key)
            logger.log(level, message, *args)

    def _apply_barriers(self, label: dict[str, Any], loaded: bool = True) -> None:
        self.take_profit, self.stop_loss = float(label["take_profit"]), float(label["stop_loss"])
        self.fee, self.horizon = float(label["fee"]), int(label["horizon"])
        # Before freqtrade's resolver runs, minimal_roi has config-style string keys; after
        # it, the int keys the resolver would have made.
        self.minimal_roi = {0: self.take_profit} if loaded else {"0": self.take_profit}
        self.stoploss = -self.stop_loss

    def _try_load(self) -> ProductionModel | None:
        try:
            model = ProductionModel.load(self.ml.registry.path, self.model_name, self.engineer)
        except (FtmlError, OSError, ValueError) as err:
            self._say(f"load:{err}", "ML gate closed for %s (no entries): %s", self.model_name, err)
            return None
        if model.label.get("barrier") != "fixed":
            self._say("barrier", "ML gate closed: model %s v%s uses %s barriers; the gated strategies trade "
                      "fixed barriers only (ROI/stoploss). Retrain with ml.label.barrier = 'fixed'.",
                      model.name, model.version, model.label.get("barrier"))
            return None
        return model

    def bot_start(self, **kwargs) -> None:
        self.model = self._try_load()
        if self.model is not None:
            self._apply_barriers(self.model.label)
            logger.info("ML gate: %s v%s (trained to %s); exits: take-profit %.2f%%, stop-loss %.2f%%, "
                        "time exit after %d candles.", self.model.name, self.model.version, self.model.train_end,
                        100 * self.take_profit, 100 * self.stop_loss, self.horizon)
        if not self.ml.gate.in_sample_guard:
            logger.warning("IN-SAMPLE GUARD OFF (ml.gate.in_sample_guard = false): entries are allowed on "
                           "candles the model was trained on; backtest results on them are optimistic.")

    def _maybe_reload(self, last_candle: pd.Timestamp) -> None:
        """Live/dry-run only: one stat() per new candle; switch when production moved."""
        if self.config.get("runmode") not in LIVE_MODES or last_candle == self._last_check:
            return
        self._last_check = last_candle
        if self.model is not None and not self.model.changed():
            return
        if self.model is not None and not self.model.production_moved():
            self.model = self._try_load() or self.model  # same version; refresh the stat key
            return
        if self.model is not None and self.model.production_id() is None:
            logger.warning("ML gate closed: %s has no production version any more (rolled back or archived); "
                           "no entries until one is promoted. Open trades keep their exits.", self.model_name)
            self.model = None
            return
        fresh = self._try_load()
        if fresh is None:
            if self.model is not None:
                logger.warning("ML gate: the new production model of %s could not be loaded; keeping v%s.",
                               self.model_name, self.model.version)
            return
        old = self.model.version if self.model else None
        self.model = fresh
        self._apply_barriers(fresh.label)
        logger.info("ML gate: switched %s from v%s to v%s without a restart.", self.model_name, old, fresh.version)

    # ------------------------------------------------------------------ freqtrade hooks
    def populate_indicators(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        dataframe = self.engineer.transform(dataframe)
        dataframe["base_signal"] = get_signal(self.signal_name)(dataframe)
        if len(dataframe):
            self._maybe_reload(dataframe["date"].iloc[-1])
        proba, blocked = self._predict(dataframe, metadata.get("pair", "?"))
        dataframe["ml_proba"] = proba
        dataframe["ml_ev"] = expected_value(proba, self.take_profit, self.stop_loss, self.fee)
        dataframe["ml_blocked"] = blocked
        return dataframe

    def _predict(self, df: pd.DataFrame, pair: str) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (NaN where no decision can be made) and the in-sample mask."""
        n = len(df)
        blocked = np.zeros(n, dtype=bool)
        if self.model is None:
            return np.full(n, np.nan), blocked
        try:
            proba = self.model.predict_proba(df)
        except Exception as err:  # a failing prediction must not stop the bot
            self._say(f"predict:{type(err).__name__}", "ML gate closed for %s: prediction failed: %s", pair, err)
            return np.full(n, np.nan), blocked
        # numpy's SIMD exp/log can differ in the last bit from the scalar path used for the
        # tail of an array, so a row's p could depend on the frame's length: round that away
        # (freqtrade's lookahead-analysis compares exactly).
        proba = np.round(proba, 10)
        proba[: self.startup_candle_count] = np.nan  # features still warming up
        if self.ml.gate.in_sample_guard:
            limit = self.model.train_end + pd.Timedelta(self.timeframe) * self.ml.training.embargo
            blocked = (df["date"] <= limit).to_numpy()
            if blocked.any():
                self._say(f"insample:{pair}:{self.model.version}",
                          "In-sample guard: %d candles of %s are at or before %s (model %s v%s train_end + "
                          "embargo): no entries there.", int(blocked.sum()), pair, limit, self.model.name,
                          self.model.version, level=logging.INFO)
        return proba, blocked

    def populate_entry_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        base = dataframe["base_signal"] & (dataframe["volume"] > 0)
        if self.model is None and self.ml.gate.fallback_ungated:
            self._say("fallback", "ML gate: no model, ml.gate.fallback_ungated is on: trading the un-gated signal.")
            dataframe.loc[base, ["enter_long", "enter_tag"]] = (1, "ungated_fallback")
            return dataframe
        gate = (dataframe["ml_ev"] > self.ev_margin.value) & ~dataframe["ml_blocked"]
        dataframe.loc[base & gate, ["enter_long", "enter_tag"]] = (1, "ml_gate")
        return dataframe

    def populate_exit_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        return dataframe

    def custom_exit(self, pair: str, trade, current_time: datetime, current_rate: float,
                    current_profit: float, **kwargs):
        if time_exit_due(trade.open_date_utc, current_time, self.horizon, self.timeframe):
            return "time_exit"
        return None
