"""MLGatedStrategy: a freqtrade IStrategy whose entries need a positive expected value.

A subclass names a base signal (``signal_name``) from ``ml.signals``. Each candle gets:

* the FeatureEngineer's features (one vectorised transform of the whole frame);
* ``ml_proba``: the production model's calibrated P(win), for the whole frame at once;
* ``ml_ev = p*E[r | win] + (1-p)*E[r | loss]``, the mean realised returns of wins and
  losses measured on the model's calibration block (stored with the model);
* ``enter_long`` = base signal AND ``ml_ev > ev_margin`` AND the candle is after the
  model's ``train_end`` + embargo (in-sample guard). ``ev_margin`` is a hyperoptable buy
  parameter whose default is ``ml.gate.ev_margin`` from config.json, the same margin
  training scored the EV gate at; a hyperopt parameter file overrides it (logged).

Exits use the model's own barriers: ROI = take-profit, stoploss = stop-loss, and a time
exit after ``horizon`` candles, so what was predicted is what is traded.

It **fails closed**: no model, a bad checksum, a feature mismatch or a failing
prediction means no entries (one log line per cause), while open trades keep their
exits. In dry-run/live it notices a newly promoted model with one stat() per new candle
and switches without a restart. If production moves (promotion or rollback) to a version
that cannot be loaded, the gate closes: the bot never keeps trading a model the operator
pulled. A refused version is logged once and not re-hashed until registry.json changes.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from freqtrade.enums import RunMode
from freqtrade.strategy import DecimalParameter, IStrategy

from ml.bundle import outcome_returns_of
from ml.config import from_dict
from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.metrics import expected_value
from ml.predictor import ProductionModel, stat_key
from ml.registry import open_registry
from ml.signals import SIGNAL_STARTUP_CANDLES, get_signal, time_exit_due

logger = logging.getLogger(__name__)
LIVE_MODES = (RunMode.DRY_RUN, RunMode.LIVE)


class MLGatedStrategy(IStrategy):
    INTERFACE_VERSION = 3
    can_short = False
    timeframe = "1h"
    process_only_new_candles = True
    use_exit_signal = True  # custom_exit (the time exit) only runs with exit signals on
    # Each trade exits with the barriers of the model that opened it (its enter_tag names
    # the version): the take-profit comes from custom_roi, the time exit from custom_exit,
    # and the stop-loss is fixed on the trade at entry from `stoploss` (the model's then).
    # freqtrade takes the lower of minimal_roi and custom_roi, so minimal_roi stays out of
    # the way; a hot reload to a model with other barriers never changes an open trade.
    use_custom_roi = True
    minimal_roi = {"0": 100.0}
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
        self._exits: dict[str, dict[str, float]] = {}  # enter_tag -> that model's exits
        self._apply_barriers({"label": self.ml.label.model_dump()})
        self._said: set[str] = set()
        self._last_check: pd.Timestamp | None = None
        self._registry = open_registry(self.ml.registry.path)
        self._seen_key = stat_key(self._registry.index)  # registry.json as last looked at
        # One source for the margin: config.json's ml.gate.ev_margin is the default that
        # freqtrade's parameter loading starts from (a hyperopt params file still wins).
        self.buy_params = {"ev_margin": self.ml.gate.ev_margin, **getattr(self, "buy_params", {})}

    # ------------------------------------------------------------------ model lifecycle
    def _say(self, key: str, message: str, *args, level: int = logging.WARNING) -> None:
        """Log a cause once, not once per candle."""
        if key not in self._said:
            self._said.add(key)
            logger.log(level, message, *args)

    def _apply_barriers(self, entry: dict[str, Any]) -> None:
        """Exits and EV inputs from a registry entry (or {"label": config label} before one)."""
        label = entry["label"]
        self.outcome = outcome_returns_of(entry)
        self.take_profit, self.stop_loss = float(label["take_profit"]), float(label["stop_loss"])
        self.fee, self.horizon = float(label["fee"]), int(label["horizon"])
        self.stoploss = -self.stop_loss
        self._exits[self._tag(entry)] = {"take_profit": self.take_profit, "horizon": self.horizon}

    def _try_load(self) -> ProductionModel | None:
        try:
            model = ProductionModel.load(self.ml.registry.path, self.model_name, self.engineer)
        except (FtmlError, OSError, ValueError) as err:
            self._say(f"load:{err}", "ML gate closed for %s (no entries): %s", self.model_name, err)
            return None
        if model.bundle.calibrator.method == "constant":
            self._say(f"constant:{model.version}", "ML gate closed: %s v%s has a constant calibrator (its scores "
                      "carried no information on the calibration block), so there is nothing to select on; no "
                      "entries. Retrain, or roll back to a model with a ranking.", model.name, model.version)
            return None
        trained_on = model.entry.get("signal")
        if trained_on is not None and trained_on != self.signal_name:
            self._say(f"signal:{model.version}", "ML gate closed: %s v%s was trained on the %r signal's trades, this "
                      "strategy enters on %r; its probabilities do not describe these entries. Train a model for "
                      "this signal (`ftml train --signal %s`).", model.name, model.version, trained_on,
                      self.signal_name, self.signal_name)
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
            self._use(self.model)
            logger.info("ML gate: %s v%s (trained to %s); exits: take-profit %.2f%%, stop-loss %.2f%%, "
                        "time exit after %d candles.", self.model.name, self.model.version, self.model.train_end,
                        100 * self.take_profit, 100 * self.stop_loss, self.horizon)
        if not self.ml.gate.in_sample_guard:
            logger.warning("IN-SAMPLE GUARD OFF (ml.gate.in_sample_guard = false): entries are allowed on "
                           "candles the model was trained on; backtest results on them are optimistic.")

    def _use(self, model: ProductionModel) -> None:
        self.model = model
        self._apply_barriers(model.entry)
        scored_at = model.entry.get("ev_margin")
        margin = float(self.ev_margin.value)
        logger.info("ML gate: entering where EV = p*%.4f + (1-p)*%.4f > %.4f.", self.outcome["win"],
                    self.outcome["loss"], margin)
        if scored_at is not None and abs(float(scored_at) - margin) > 1e-12:
            self._say(f"margin:{model.version}:{margin}", "ML gate: trading at ev_margin %.4f, but %s v%s was "
                      "validated at %.4f (ml.gate.ev_margin when it was trained); its gate results describe that "
                      "margin.", margin, model.name, model.version, float(scored_at))

    def _close(self, message: str, *args) -> None:
        """Stop entering (open trades keep their exits). Called only when registry.json
        changed, so this logs once per change, not once per candle."""
        self.model = None
        logger.warning(message, *args)

    def _maybe_reload(self, last_candle: pd.Timestamp) -> None:
        """Live/dry-run only: one stat() per new candle; act only when registry.json changed.

        Production moved to a version that loads -> switch. Moved to one that cannot be
        loaded, or to none -> close the gate: the operator pulled the old model, so the bot
        must not go on trading it. Nothing is re-read or re-hashed until the file changes
        again, so a refused version costs one log line, not one per candle.
        """
        if self.config.get("runmode") not in LIVE_MODES or last_candle == self._last_check:
            return
        self._last_check = last_candle
        key = stat_key(self._registry.index)
        if key == self._seen_key:
            return
        self._seen_key = key
        try:
            state = self._registry.read()["models"].get(self.model_name, {})
        except Exception as err:  # a corrupt or hostile registry.json must not keep a pulled model live
            self._close("ML gate closed for %s: registry.json cannot be read (%s); no entries until it is fixed. "
                        "Open trades keep their exits.", self.model_name, err)
            return
        production, disabled = state.get("production"), state.get("disabled")
        if disabled:
            self._close("ML gate closed: %s was disabled by the operator (%s); no entries until `ftml registry enable "
                        "%s`. Open trades keep their exits.", self.model_name, disabled.get("reason"), self.model_name)
            return
        if self.model is not None and production == self.model.version:
            self.model.stat_key = key  # rewritten, same production: nothing to load
            return
        if production is None:
            self._close("ML gate closed: %s has no production version any more (rolled back, archived or disabled); "
                        "no entries until one is promoted. Open trades keep their exits.", self.model_name)
            return
        old = self.model.version if self.model else None
        fresh = self._try_load()
        if fresh is None:
            self._close("ML gate closed: production of %s moved to v%s, which cannot be loaded (see above); no "
                        "entries, v%s is NOT traded any more. Open trades keep their exits.", self.model_name,
                        production, old)
            return
        self._use(fresh)
        logger.info("ML gate: switched %s from v%s to v%s without a restart.", self.model_name, old, fresh.version)

    # ------------------------------------------------------------------ freqtrade hooks
    def populate_indicators(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        dataframe = self.engineer.transform(dataframe, metadata.get("pair", "?"))
        dataframe["base_signal"] = get_signal(self.signal_name)(dataframe)
        if len(dataframe):
            self._maybe_reload(dataframe["date"].iloc[-1])
        proba, blocked = self._predict(dataframe, metadata.get("pair", "?"))
        dataframe["ml_proba"] = proba
        dataframe["ml_ev"] = expected_value(proba, self.outcome["win"], self.outcome["loss"])
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
        dataframe.loc[base & gate, ["enter_long", "enter_tag"]] = (1, self._tag(self.model.entry if self.model else {}))
        return dataframe

    def populate_exit_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        return dataframe

    @staticmethod
    def _tag(entry: dict[str, Any]) -> str:
        """The enter_tag of trades a model opens: it names the version, so the trade keeps
        that model's exits whatever is production later ("ungated" for config barriers)."""
        return f"ml_gate:v{entry['id']}" if "id" in entry else "ungated_fallback"

    def exits_of(self, entry_tag: str | None) -> dict[str, float]:
        """Take-profit and horizon of the model that opened a trade. After a restart an open
        trade's model may not be loaded: its barriers are read from the registry once."""
        tag = entry_tag or "ungated_fallback"
        if tag not in self._exits and tag.startswith("ml_gate:v"):
            try:
                label = self._registry.version(self.model_name, int(tag.split(":v", 1)[1]))["label"]
                self._exits[tag] = {"take_profit": float(label["take_profit"]), "horizon": int(label["horizon"])}
            except Exception as err:  # noqa: BLE001 - an open trade must keep *some* exits
                self._say(f"exits:{tag}", "ML gate: barriers of %s not found (%s); that trade uses the current "
                          "model's exits.", tag, err)
                self._exits[tag] = {"take_profit": self.take_profit, "horizon": self.horizon}
        return self._exits.get(tag, {"take_profit": self.take_profit, "horizon": self.horizon})

    def custom_roi(self, pair: str, trade, current_time: datetime, trade_duration: int, entry_tag: str | None,
                   side: str, **kwargs) -> float | None:
        return self.exits_of(entry_tag)["take_profit"]

    def custom_exit(self, pair: str, trade, current_time: datetime, current_rate: float,
                    current_profit: float, **kwargs):
        horizon = int(self.exits_of(trade.enter_tag)["horizon"])
        if time_exit_due(trade.open_date_utc, current_time, horizon, self.timeframe):
            return "time_exit"
        return None
