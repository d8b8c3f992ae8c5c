"""Typed settings for the ``"ml"`` section of a freqtrade config.json.

One file is the single source of truth: freqtrade reads its own keys, the ``ml`` package
and the strategies read the ``"ml"`` section through :func:`load` / :func:`from_dict`.
Unknown keys are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ml.errors import FtmlError

FeatureGroup = Literal["returns", "trend", "momentum", "volatility", "volume", "calendar", "higher_tf"]
ModelFamily = Literal["xgboost", "lightgbm", "catboost", "hist_gb", "random_forest", "logistic"]
ALL_GROUPS: tuple[str, ...] = FeatureGroup.__args__  # type: ignore[attr-defined]
ALL_FAMILIES: tuple[str, ...] = ModelFamily.__args__  # type: ignore[attr-defined]
# Searched unless ml.training.families says otherwise. CatBoost and the random forest are
# opt-in: on our markets they fit slower for no better out-of-fold log loss (bench_training).
DEFAULT_FAMILIES: tuple[str, ...] = ("xgboost", "lightgbm", "hist_gb", "logistic")


class ConfigError(FtmlError, ValueError):
    """A user-fixable problem with config.json; the message is one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistrySettings(_Section):
    path: str = Field("registry", description="Registry store folder; a relative path is taken from the folder "
                      "of the config file, so cron, the bot and a shell anywhere open the same store.")


class ModelSettings(_Section):
    # The same rule as ml.registry.MODEL_NAME: the name becomes a folder of the store, so
    # '.', '..' and hidden names are refused before any path is built.
    name: str = Field("trend_pullback", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


class FeatureSettings(_Section):
    groups: list[FeatureGroup] = Field(default_factory=lambda: list(ALL_GROUPS), min_length=1)
    periods: list[int] = Field(default_factory=lambda: [6, 14, 30, 60])
    higher_timeframes: list[str] = Field(default_factory=lambda: ["1h", "4h"])
    correlation_pruning: float | None = Field(None, gt=0.0, le=1.0)
    include_columns: list[str] = Field(default_factory=list, description="Columns the strategy's own "
                                       "populate_indicators makes, by name or glob pattern ('rsi', 'bb_*'), "
                                       "added to the features (opt-in).")

    @model_validator(mode="after")
    def _periods_positive(self) -> FeatureSettings:
        if not self.periods or any(p < 2 for p in self.periods):
            raise ValueError(f"periods must be a non-empty list of ints >= 2, got {self.periods}")
        return self


class LabelSettings(_Section):
    min_profit: float = Field(0.0, ge=-0.5, le=0.5, description="Label 1 when the strategy's trade earns a net "
                              "profit ratio after fees above this.")


class TrainingSettings(_Section):
    strategy: str | None = Field(None, description="Learn from this freqtrade strategy's own trades "
                                 "(its class name, as for freqtrade's --strategy).")
    families: list[ModelFamily] = Field(default_factory=lambda: list(DEFAULT_FAMILIES), min_length=1)
    trials: int = Field(30, ge=1)
    timeout: float | None = Field(None, gt=0)
    folds: int = Field(4, ge=2)
    embargo: int = Field(12, ge=0, description="Candles dropped after each validation window.")
    calib_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    min_samples: int = Field(500, ge=50)
    n_jobs: int | None = Field(None, ge=1, description="Threads per model; null = cores available.")
    sample_weight: Literal["none", "balanced", "return"] = Field(
        "none", description="Weights of the training rows in the model fits: none; balanced (each class "
        "weighs half); return (|realised return|: a big win or loss counts more than a scratch). The "
        "calibrator is always fitted unweighted, so probabilities stay probabilities.")
    ensemble_members: int = Field(0, ge=0, le=6, description="0: one model (the best trial). k >= 2: also "
                                  "try an average and a stacked ensemble of the best trial of each of the top k "
                                  "families, on purged out-of-fold predictions; one is used only when it beats the "
                                  "best single model by two standard errors (ml.ensemble).")
    workers: int = Field(1, ge=1)
    storage: str | None = Field(None, description="Optuna storage URL; null = SQLite in user_data.")
    study: str | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _ensemble_of_two_or_more(self) -> TrainingSettings:
        if self.ensemble_members == 1:
            raise ValueError("ensemble_members is 0 (one model) or the number of families to combine, at least 2")
        return self


class GateSettings(_Section):
    ev_margin: float = Field(0.0, ge=-0.05, le=0.05)
    min_auc: float = Field(0.53, ge=0.0, le=1.0)
    max_ece: float = Field(0.1, gt=0.0, le=1.0, description="A ceiling on the test ECE whatever the sample "
                           "size; the noise band (ece_within_noise_band) is the real test.")
    max_citl_se: float = Field(2.0, gt=0.0, description="|mean p - hit rate| on the test block must be within "
                               "this many standard errors.")
    max_abs_z: float = Field(2.0, gt=0.0, description="|Spiegelhalter Z| on the test block (corrected for "
                             "overlapping trades) must be at most this.")
    ece_within_noise_band: bool = Field(True, description="The test ECE must lie inside the 90% band a perfectly "
                                        "calibrated forecaster shows at the same sample size.")
    min_brier_skill: float = Field(0.0, ge=-1.0, le=1.0)
    min_trades: int = Field(30, ge=0)
    min_ev_return: float = Field(0.0, ge=-1.0, le=1.0)
    in_sample_guard: bool = True
    fallback_ungated: bool = False
    walkforward: str | None = Field(None, description="A walk-forward schedule (ftml walkforward writes it): in a "
                                    "backtest, each candle is scored by the version in production at its time.")
    runtime: Literal["native", "onnx"] = Field("native", description="Serve the model from its native file, or "
                                               "from model.onnx through onnxruntime (ftml export onnx NAME VERSION).")


class TrackingSettings(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "freqtrade-ml"
    entity: str | None = None
    dir: str = "."


class RetrainSettings(_Section):
    window_days: int = Field(30, ge=1, description="The recent window that drift and scoring look at.")
    train_days: int = Field(365, ge=7, description="Candles before the window the challenger trains on.")
    max_psi: float = Field(0.25, gt=0.0, description="Feature PSI above this counts as drift.")
    when: Literal["always", "drift_or_age"] = "always"
    max_age_days: int = Field(30, ge=1, description="With when=drift_or_age: retrain a champion this old.")
    min_window_days: int = Field(7, ge=1, description="Skip when less new data than this since the champion.")
    min_logloss_gain: float = Field(0.0, ge=0.0, description="The challenger must beat the champion's window log loss by this.")
    strategy: str = Field("TrendPullbackML", description="Gated strategy for the backtest gate.")
    backtest: bool = True


class RecalibrationSettings(_Section):
    window_days: int = Field(30, ge=1, description="Refit the calibration layer on the strategy's trades of the "
                             "last N days whose outcome is known.")
    holdout_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="The newest share of those trades, kept out "
                                    "of the fit: the new calibrator is applied only if it beats the current one there.")
    min_rows: int = Field(100, ge=20, description="Fewer resolved trades than this in the window: no recalibration.")
    in_retrain: bool = Field(True, description="ftml retrain recalibrates the model in production after "
                                              "the round: a champion it keeps, or a challenger it promotes.")


class MLConfig(_Section):
    """The whole ``"ml"`` section. Every key has a default that works."""

    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    label: LabelSettings = Field(default_factory=LabelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    recalibration: RecalibrationSettings = Field(default_factory=RecalibrationSettings)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at the parent of ``loc`` (for an unknown-key message)."""
    model: type[BaseModel] = MLConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields)


# Keys of earlier versions, with what replaced them: a config written for those versions
# gets a line that says what to do, not just "unknown key".
REMOVED_KEYS = {
    "ml.training.signal": "models learn from a strategy's own trades: set ml.training.strategy (or ftml train "
                          "--strategy) to your strategy's class name",
    **{f"ml.label.{key}": "labels are the strategy's own trades, which exit by its own rules (ROI, stoploss, "
                          "custom_exit, ...): set them in the strategy; ml.label keeps only min_profit"
       for key in ("barrier", "take_profit", "stop_loss", "atr_period", "horizon", "fee")},
}


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = "ml." + ".".join(str(p) for p in loc) if loc else "ml"
    if first["type"] == "extra_forbidden" and key in REMOVED_KEYS:
        return f"{source}: '{key}' was removed: {REMOVED_KEYS[key]}."
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{source}: unknown key '{key}' (allowed: {', '.join(allowed)}){did_you_mean}"
    value = json.dumps(first.get("input"), default=str)
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: bad value for '{key}': {value}. {first['msg']}{more}"


def from_dict(section: dict[str, Any] | None, source: str = "config", base: str | os.PathLike[str] | None = None
              ) -> MLConfig:
    """Validate an ``"ml"`` section (as found in freqtrade's ``self.config``). ``base``: the
    folder of the config file, which a relative ``registry.path`` is taken from."""
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{source}: 'ml' must be an object, got {type(section).__name__}")
    try:
        cfg = MLConfig.model_validate(section or {})
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None
    if base is not None and not Path(cfg.registry.path).is_absolute():
        resolved = str((Path(base) / cfg.registry.path).resolve())
        cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"path": resolved})})
    return cfg


def config_folder(freqtrade_config: dict[str, Any]) -> Path | None:
    """The folder of the first config file freqtrade loaded (None when read from stdin)."""
    files = [f for f in freqtrade_config.get("config_files") or [] if f and f != "-"]
    return Path(files[0]).resolve().parent if files else None


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read config.json with an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Pass --config PATH.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return data


def load(path: str | os.PathLike[str]) -> MLConfig:
    """Parse the ``"ml"`` section of ``path`` into typed settings with defaults."""
    return from_dict(read_json(path).get("ml"), source=str(path), base=Path(path).resolve().parent)


# Keys of a freqtrade config that hold credentials; a backtest needs none of them.
SECRET_KEYS = {"exchange": ("key", "secret", "password", "uid", "walletAddress", "privateKey"),
               "telegram": ("token", "chat_id"), "api_server": ("password", "jwt_secret_key", "ws_token"),
               "discord": ("webhook_url",), "webhook": ("url",)}


def without_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a freqtrade config to write beside results (a walk-forward's own config):
    exchange keys, bot tokens and the Optuna storage password removed. Only backtests read it;
    anything that needs the storage gets it from the settings in memory."""
    from ml.storage import redact

    clean = copy.deepcopy(config)
    for section, keys in SECRET_KEYS.items():
        for key in keys:
            if isinstance(clean.get(section), dict) and clean[section].get(key):
                clean[section][key] = ""
    training = clean.get("ml", {}).get("training")
    if isinstance(training, dict) and training.get("storage"):
        training["storage"] = redact(training["storage"])
    return clean
