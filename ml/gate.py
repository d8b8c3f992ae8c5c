"""MLGate: gate any freqtrade strategy in one line.

    class MyStrategyML(MLGate, MyStrategy):
        pass

A mixin, not a base class or a decorator: Python's method order puts ``MLGate`` in front
of the user's class, so its ``populate_indicators`` / ``populate_entry_trend`` run the
user's own (``super()``) first and then only *remove* entries; every other method,
attribute and callback (ROI, stoploss, trailing, ``custom_stoploss``, ``custom_exit``,
exit signals, ``can_short``, leverage) is the user's, untouched. freqtrade still sees one
ordinary ``IStrategy`` subclass, and its parameter detection finds ``ev_margin`` here.

Per candle the gate adds:

* ``ml_proba`` / ``ml_ev``: calibrated P(the long trade opened here wins) and its expected
  value ``p*E[r | win] + (1-p)*E[r | loss]`` (returns measured on the model's calibration
  block, per side); ``ml_proba_short`` / ``ml_ev_short`` for shorts;
* ``ml_blocked``: the candle is inside the model's training data (+ embargo);
* ``ml_rejected_long`` / ``ml_rejected_short``: the close where the user's signal was
  refused (NaN elsewhere), drawn as crosses by ``freqtrade plot-dataframe``.

An ``enter_long`` / ``enter_short`` of the user survives only where that side's EV is above
``ev_margin`` and the candle is not blocked; ``enter_tag`` is kept. The model is the
production version of the model named after the user's strategy class (``ml_model_name``
overrides), trained by ``ftml train --strategy MyStrategy`` on the strategy's own trades.

It **fails closed**: no model, a bad checksum, a feature mismatch, a model of another
strategy or a failing prediction mean no entries (one log line per cause) while open
trades keep the strategy's exits. In dry-run/live it follows the registry with one stat()
per new candle: a new production version is switched to without a restart. A promoted
version that cannot be loaded leaves the verified model in memory trading (an error says
so); a rollback to a version that cannot be loaded, a rollback to nothing, archiving the
production version or disabling the model closes the gate. Each filled entry records the
version that scored it in the trade's custom data (``ml_model``, ``ml_version``,
``ml_revision``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from freqtrade.enums import RunMode
from freqtrade.strategy import DecimalParameter

from ml.bundle import outcome_returns_of
from ml.calibration import has_no_ranking
from ml.config import config_folder, from_dict
from ml.errors import FtmlError
from ml.features import FeatureEngineer
from ml.gate_schedule import Schedule
from ml.metrics import expected_value
from ml.predictor import ProductionModel, stat_key
from ml.registry import open_registry
from ml.trade_labels import UNGATED_KEY, exit_differences, exit_settings, ungated_class

logger = logging.getLogger(__name__)
LIVE_MODES = (RunMode.DRY_RUN, RunMode.LIVE)
# hyperopt spaces that change when trades exit ("default" holds roi and stoploss)
EXIT_SPACES = {"roi", "stoploss", "trailing", "sell", "exit", "default", "all"}
SIDE_FEATURE = "side_short"  # 1.0 for a short trade: one model serves both sides
SIDES = {"long": ("enter_long", "ml_proba", "ml_ev"), "short": ("enter_short", "ml_proba_short", "ml_ev_short")}
GATE_PLOTS = {
    "ML probability": {"ml_proba": {"color": "blue"}, "ml_proba_short": {"color": "orange"}},
    "ML expected value": {"ml_ev": {"color": "green", "type": "bar"}, "ml_ev_short": {"color": "red", "type": "bar"}},
}
# freqtrade plot-dataframe: the strategy's signals the gate refused, as crosses on the price
# (the entries it kept are freqtrade's own entry markers).
REJECTED = {"long": "ml_rejected_long", "short": "ml_rejected_short"}
GATE_MAIN_PLOT = {
    REJECTED["long"]: {"color": "grey", "plotly": {"mode": "markers", "name": "long signal refused by the ML gate",
                                                   "marker": {"symbol": "x", "size": 9}}},
    REJECTED["short"]: {"color": "purple", "plotly": {"mode": "markers", "name": "short signal refused by the ML gate",
                                                      "marker": {"symbol": "x", "size": 9}}},
}


def side_outcomes(model: ProductionModel) -> dict[str, dict[str, float]]:
    """E[r | win] and E[r | loss] per side; a side the model never saw has none (NaN EV: no entry)."""
    sides = model.entry.get("sides") or ["long"]
    return {side: outcome_returns_of(model.entry, side) if side in sides else {"win": np.nan, "loss": np.nan}
            for side in SIDES}


def _label(model: ProductionModel | None) -> str:
    """'v3', or 'v3 (calibration r2)' when a recalibration revision is active."""
    if model is None:
        return "no model"
    return f"v{model.version}" + (f" (calibration r{model.revision})" if model.revision else "")


def _promoted_last(doc: dict[str, Any], name: str, version: Any) -> bool:
    """Is the newest registry event of ``name`` a promote of ``version`` (not a rollback)?"""
    mine = [e for e in doc.get("events", []) if e.get("model") == name]
    return bool(mine) and mine[-1].get("action") == "promote" and mine[-1].get("version") == version


class MLGate:
    """Mixin that keeps a strategy's entries only where the model's EV is positive."""

    ml_model_name: str | None = None  # default: the user's strategy class name
    ev_margin = DecimalParameter(-0.01, 0.02, default=0.0, decimals=3, space="buy", optimize=True, load=True)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        # The label backtest runs the strategy with every entry: the gate passes through.
        self.ml_ungated = bool(config.get(UNGATED_KEY))
        self.ml = from_dict(config.get("ml"), source="config 'ml' section", base=config_folder(config))
        self.engineer = FeatureEngineer(self.ml.features, config.get("timeframe", self.timeframe))
        self.startup_candle_count = max(int(getattr(self, "startup_candle_count", 0)), self.engineer.startup_candles)
        self.ml_strategy = ungated_class(type(self)).__name__
        self.model_name = self.ml_model_name or self.ml_strategy
        self.model: ProductionModel | None = None
        self._outcome = {side: {"win": 0.0, "loss": 0.0} for side in SIDES}
        self._said: set[str] = set()
        self._last_check: pd.Timestamp | None = None
        self._scored_by: dict[str, ProductionModel | None] = {}  # pair -> model of its newest analysis
        self._schedule: Schedule | None = None  # a walk-forward backtest: the model of each moment
        self._registry = open_registry(self.ml.registry.path)
        self._seen_key = stat_key(self._registry.index)
        # config.json's ml.gate.ev_margin is the default freqtrade's parameter loading starts
        # from; a hyperopt params file still wins.
        self.buy_params = {"ev_margin": self.ml.gate.ev_margin, **getattr(self, "buy_params", {})}
        self._merge_plot_config()

    def _merge_plot_config(self) -> None:
        """The user's plot_config plus the gate's subplots (the user's keys win)."""
        try:
            user = dict(getattr(self, "plot_config", None) or {})
            subplots = {**GATE_PLOTS, **(user.get("subplots") or {})}
            main_plot = {**GATE_MAIN_PLOT, **(user.get("main_plot") or {})}
            self.plot_config = {**user, "main_plot": main_plot, "subplots": subplots}
        except (AttributeError, TypeError):  # a read-only property: leave the user's
            pass

    # ------------------------------------------------------------------ model lifecycle
    def _say(self, key: str, message: str, *args, level: int = logging.WARNING) -> None:
        """Log a cause once, not once per candle."""
        if key not in self._said:
            self._said.add(key)
            logger.log(level, message, *args)

    def _try_load(self) -> ProductionModel | None:
        try:
            model = ProductionModel.load(self.ml.registry.path, self.model_name, self.engineer,
                                         runtime=self.ml.gate.runtime)
        except (FtmlError, OSError, ValueError) as err:
            self._say(f"load:{err}", "ML gate closed for %s (no entries): %s", self.model_name, err)
            return None
        why = self._refusal(model)
        if why:
            self._say(f"refuse:{model.version}:{why}", "ML gate closed: %s v%s %s; no entries.", model.name,
                      model.version, why)
            return None
        return model

    def _refusal(self, model: ProductionModel) -> str | None:
        """Why a verified model still must not gate this strategy (None: it may)."""
        entry = model.entry
        if has_no_ranking(model.bundle.calibrator):
            return ("has a constant calibrator (its scores carried no information on the calibration block), so "
                    "there is nothing to select on. Retrain, or roll back to a model with a ranking")
        if entry.get("label_source") != "trades":
            return (f"was trained on fixed-barrier labels by an earlier version, not on this strategy's trades. "
                    f"Run `ftml train --strategy {self.ml_strategy}`")
        if entry.get("strategy") != self.ml_strategy:
            return (f"was trained on the trades of {entry.get('strategy')!r}, this is {self.ml_strategy!r}: its "
                    f"probabilities do not describe these entries. Run `ftml train --strategy {self.ml_strategy}`")
        return None

    def _use(self, model: ProductionModel) -> None:
        self.model = model
        sides = model.entry.get("sides") or ["long"]
        self._outcome = side_outcomes(model)
        margin = float(self.ev_margin.value)
        evs = ", ".join(f"{side}: p*{self._outcome[side]['win']:.4f} + (1-p)*{self._outcome[side]['loss']:.4f}"
                        for side in sides)
        logger.info("ML gate: %s %s (fitted to %s) gates %s of %s where EV > %.4f (%s).", model.name,
                    _label(model), model.train_end, "/".join(sides), self.ml_strategy, margin, evs)
        if getattr(self, "can_short", False) and "short" not in sides:
            self._say(f"noshort:{model.version}", "ML gate: %s v%s saw no short trades; every short entry is "
                      "refused until a model trained on shorts is promoted.", model.name, model.version)
        scored_at = model.entry.get("ev_margin")
        if scored_at is not None and abs(float(scored_at) - margin) > 1e-12:
            self._say(f"margin:{model.version}:{margin}", "ML gate: trading at ev_margin %.4f, but %s v%s was "
                      "validated at %.4f; its gate results describe that margin.", margin, model.name,
                      model.version, float(scored_at))
        if changed := exit_differences(model.entry.get("exits"), exit_settings(self)):
            self._say(f"exits:{model.version}:{changed}", "ML gate: %s exits differently from the trades %s v%s "
                      "learned from (%s): its probabilities describe those trades, not these. Retrain (ftml train) "
                      "after changing exits, or undo the change.", self.ml_strategy, model.name, model.version,
                      "; ".join(changed))

    def ft_bot_start(self, **kwargs) -> None:
        # After freqtrade's own start (the user's bot_start, then the hyperopt parameters):
        # ev_margin has its loaded value when the model's gate is logged.
        super().ft_bot_start(**kwargs)  # type: ignore[misc]
        if self.ml_ungated:
            return
        tuned = EXIT_SPACES & set(self.config.get("spaces") or [])
        if self.config.get("runmode") == RunMode.HYPEROPT and tuned:
            logger.warning("ML gate: hyperopt tunes the exits of %s (spaces %s), but the model learned from trades "
                           "that exit by its current settings: every epoch is gated with probabilities for other "
                           "trades. The profits hyperopt reports are freqtrade's own and match a backtest with the "
                           "same parameters; to use new exits, adopt them in %s, retrain (ftml train), then tune "
                           "ev_margin alone with --spaces buy.", self.ml_strategy, ", ".join(sorted(tuned)),
                           self.ml_strategy)
        if self.ml.gate.walkforward:
            self._start_schedule(self.ml.gate.walkforward)
        elif (model := self._try_load()) is not None:
            self._use(model)
        if not self.ml.gate.in_sample_guard:
            logger.warning("IN-SAMPLE GUARD OFF (ml.gate.in_sample_guard = false): entries are allowed on "
                           "candles the model was trained on; backtest results on them are optimistic.")

    def _start_schedule(self, path: str) -> None:
        """A walk-forward backtest: each candle scored by the version in production at its time."""
        if self.config.get("runmode") in LIVE_MODES:
            self._close("ML gate closed: ml.gate.walkforward is for backtests; a running bot follows the registry. "
                        "Remove it from the config; no entries.")
            return
        try:
            self._schedule = Schedule.load(path, self.engineer)
        except (FtmlError, OSError, ValueError) as err:
            self._close("ML gate closed (no entries): %s", err)
            return
        if self._schedule.models:
            self._use(self._schedule.models[-1])
        logger.info("ML gate: walk-forward schedule %s, %d segments, versions %s.", path, len(self._schedule.segments),
                    [s.model.version if s.model else None for s in self._schedule.segments])

    def _close(self, message: str, *args) -> None:
        """Stop entering (open trades keep their exits); logged once per registry change."""
        self.model = None
        logger.warning(message, *args)

    def _maybe_reload(self, last_candle: pd.Timestamp) -> None:
        """Live/dry-run only: one stat() per new candle; act only when registry.json changed."""
        if self.config.get("runmode") not in LIVE_MODES or last_candle == self._last_check:
            return
        self._last_check = last_candle
        key = stat_key(self._registry.index)
        if key == self._seen_key:
            return
        self._seen_key = key
        try:
            doc = self._registry.read()
            state = doc["models"].get(self.model_name, {})
        except Exception as err:  # a corrupt or hostile registry.json must not keep a pulled model live
            self._close("ML gate closed for %s: registry.json cannot be read (%s); no entries until it is fixed. "
                        "Open trades keep their exits.", self.model_name, err)
            return
        production, disabled = state.get("production"), state.get("disabled")
        if disabled:
            self._close("ML gate closed: %s was disabled by the operator (%s); no entries until `ftml registry enable "
                        "%s`. Open trades keep their exits.", self.model_name, disabled.get("reason"), self.model_name)
            return
        revision = (state.get("versions", {}).get(str(production)) or {}).get("calibration_revision") or None
        if self.model is not None and (production, revision) == (self.model.version, self.model.revision):
            return  # rewritten, same production and calibration: nothing to load
        if production is None:
            self._close("ML gate closed: %s has no production version any more (rolled back, archived or disabled); "
                        "no entries until one is promoted. Open trades keep their exits.", self.model_name)
            return
        old = _label(self.model)
        fresh = self._try_load()
        if fresh is None and self.model is not None and _promoted_last(doc, self.model_name, production):
            # A forward promote to a version that cannot be loaded: the operator wanted a newer
            # model, not to stop, and the one in memory was verified when it was loaded.
            logger.error("ML gate: %s v%s was promoted but cannot be loaded (see above); still trading %s, loaded "
                         "and verified earlier. Fix it or promote another version.", self.model_name, production, old)
            return
        if fresh is None:
            self._close("ML gate closed: production of %s moved to v%s, which cannot be loaded (see above); no "
                        "entries, %s is NOT traded any more. Open trades keep their exits.", self.model_name,
                        production, old)
            return
        self._use(fresh)
        logger.info("ML gate: switched %s from %s to %s without a restart.", self.model_name, old, _label(fresh))

    # ------------------------------------------------------------------ freqtrade hooks
    def populate_indicators(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        dataframe = super().populate_indicators(dataframe, metadata)  # type: ignore[misc]
        if self.ml_ungated:
            return dataframe
        pair = metadata.get("pair", "?")
        if len(dataframe):
            self._maybe_reload(dataframe["date"].iloc[-1])
        self._scored_by[pair] = self.model
        n = len(dataframe)
        blocked = np.zeros(n, dtype=bool)
        probas = {side: np.full(n, np.nan) for side in SIDES}
        evs = {side: np.full(n, np.nan) for side in SIDES}
        # One model for every candle, or (a walk-forward backtest) each candle's own.
        parts = self._schedule.parts(dataframe["date"]) if self._schedule else [(slice(None), self.model)]
        features = None
        for rows, model in parts:
            if model is None:
                continue
            try:
                if features is None:
                    features = self.engineer.features(dataframe, pair)
                outcomes = self._outcome if model is self.model else side_outcomes(model)
                for side in SIDES:
                    probas[side][rows] = self._predict(features.iloc[rows], side, model)
                    evs[side][rows] = expected_value(probas[side][rows], outcomes[side]["win"], outcomes[side]["loss"])
            except Exception as err:  # a failing prediction must not stop the bot
                self._say(f"predict:{type(err).__name__}", "ML gate closed for %s: prediction failed: %s", pair, err)
            blocked[rows] = self._in_sample(dataframe.iloc[rows], pair, model)
        for side, (_, proba_col, ev_col) in SIDES.items():
            probas[side][: self.engineer.startup_candles] = np.nan  # features still warming up
            evs[side][: self.engineer.startup_candles] = np.nan
            dataframe[proba_col] = probas[side]
            dataframe[ev_col] = evs[side]
        dataframe["ml_blocked"] = blocked
        return dataframe

    def _predict(self, features: pd.DataFrame, side: str, model: ProductionModel) -> np.ndarray:
        """Calibrated P(win) of a trade on ``side`` opened from each candle (NaN: no decision)."""
        n = len(features)
        if side not in (model.entry.get("sides") or ["long"]):
            return np.full(n, np.nan)
        if SIDE_FEATURE in model.feature_names:
            features = features.assign(**{SIDE_FEATURE: 1.0 if side == "short" else 0.0})
        # numpy's SIMD exp/log can differ in the last bit from the scalar tail of an array,
        # so a row's p could depend on the frame's length: round that away (freqtrade's
        # lookahead-analysis compares exactly).
        return np.round(model.predict_proba(features), 10)

    def _in_sample(self, df: pd.DataFrame, pair: str, model: ProductionModel) -> np.ndarray:
        if not self.ml.gate.in_sample_guard:
            return np.zeros(len(df), dtype=bool)
        limit = model.train_end + pd.Timedelta(self.timeframe) * self.ml.training.embargo
        blocked = (df["date"] <= limit).to_numpy()
        if blocked.any():
            self._say(f"insample:{pair}:{model.version}", "In-sample guard: %d candles of %s are at or before "
                      "%s (model %s v%s train_end + embargo): no entries there.", int(blocked.sum()), pair, limit,
                      model.name, model.version, level=logging.INFO)
        return blocked

    def order_filled(self, pair: str, trade, order, current_time, **kwargs) -> None:
        """Record on the trade which model version (and calibration revision) scored its entry:
        ``trade.get_custom_data("ml_version")``, in the bot's database and in backtests."""
        super().order_filled(pair=pair, trade=trade, order=order, current_time=current_time,  # type: ignore[misc]
                             **kwargs)
        if self.ml_ungated or order.ft_order_side != trade.entry_side or trade.get_custom_data("ml_model"):
            return
        model = self._schedule.model_at(current_time) if self._schedule else self._scored_by.get(pair)
        trade.set_custom_data("ml_model", _label(model))
        if model is not None:
            trade.set_custom_data("ml_version", int(model.version))
            trade.set_custom_data("ml_revision", int(model.revision or 0))

    def populate_entry_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        dataframe = super().populate_entry_trend(dataframe, metadata)  # type: ignore[misc]
        if self.ml_ungated:
            return dataframe
        if self.model is None and self.ml.gate.fallback_ungated:
            self._say("fallback", "ML gate: no model, ml.gate.fallback_ungated is on: trading the un-gated entries.")
            return dataframe
        for side, (enter_col, _, ev_col) in SIDES.items():
            if enter_col not in dataframe:
                dataframe[REJECTED[side]] = np.nan
                continue
            keep = (dataframe[ev_col] > self.ev_margin.value) & ~dataframe["ml_blocked"]
            refused = (dataframe[enter_col] == 1) & ~keep
            dataframe[REJECTED[side]] = dataframe["close"].where(refused)  # for plot-dataframe
            dataframe.loc[refused, enter_col] = 0
        return dataframe
