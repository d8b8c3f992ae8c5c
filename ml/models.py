"""Model families behind one small interface, saved in non-executable formats.

A family knows its Optuna search space (``suggest``), how to build and fit an estimator
(``fit`` with a time-ordered early-stopping slice), how to predict the raw probability of
class 1, and how to save/load itself:

| family        | file          | format                                         |
| ------------- | ------------- | ---------------------------------------------- |
| xgboost       | model.ubj     | XGBoost's universal binary JSON                |
| lightgbm      | model.txt     | LightGBM's text model                          |
| catboost      | model.cbm     | CatBoost's native binary model (flatbuffers)   |
| hist_gb       | model.skops   | skops, loaded with an explicit trusted-types list |
| random_forest | model.skops   | skops, same                                    |
| logistic      | model.skops   | skops, same                                    |

Nothing here uses pickle or joblib, so a model file cannot run code when loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# Exactly the scikit-learn types our skops families contain; anything else in a file makes
# skops refuse to load it.
SKOPS_TRUSTED = [
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.float",
    "builtins.int",
    "builtins.slice",
]
EARLY_STOPPING_ROUNDS = 30


def float32_grid(X: np.ndarray) -> np.ndarray:
    """``X`` rounded to the nearest float32 values, kept as float64.

    A tree split between two doubles that one float32 holds (MFI at 0.9999999999999983 and
    at 1.0; cos(8h) and cos(16h), both -0.5) routes them apart natively and together in
    ONNX (measured: |dp| up to 0.35). Fitted on this grid, a tree has no such split."""
    return np.asarray(X, dtype=np.float32).astype(np.float64)


def available_cores() -> int:
    """Cores this process may use (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Trial(Protocol):  # the part of optuna.Trial we use
    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float: ...


@dataclass
class FittedModel:
    """A trained estimator plus what is needed to save and reload it."""

    family: str
    params: dict[str, Any]
    estimator: Any
    best_iteration: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Fitted on inputs rounded to float32 (every model since bundles record ``inputs``), so
    # it predicts on them too: the values an ONNX copy, which takes float32, sees as well.
    float32_inputs: bool = False

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        X = float32_grid(X) if self.float32_inputs else np.asarray(X, dtype=np.float64)
        return FAMILIES[self.family].predict(self.estimator, X)

    def save(self, folder: Path) -> list[str]:
        """Write the model file(s) into ``folder``; return their names."""
        return FAMILIES[self.family].save(self.estimator, Path(folder))

    def importance(self, n_features: int) -> np.ndarray:
        return FAMILIES[self.family].importance(self.estimator, n_features)


class Family:
    name: str
    filename: str

    def suggest(self, trial: Trial) -> dict[str, Any]:
        raise NotImplementedError

    def fit(self, params, X, y, X_val, y_val, n_jobs: int, seed: int, sample_weight=None) -> FittedModel:
        raise NotImplementedError

    def predict(self, estimator, X: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(X)[:, 1]

    def save(self, estimator, folder: Path) -> list[str]:
        raise NotImplementedError

    def load(self, folder: Path):
        raise NotImplementedError

    def importance(self, estimator, n_features: int) -> np.ndarray:
        return np.zeros(n_features)


class XGBoostFamily(Family):
    name, filename = "xgboost", "model.ubj"

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {
            "max_depth": trial.suggest_int("xgb_max_depth", 2, 6),
            "learning_rate": trial.suggest_float("xgb_learning_rate", 0.01, 0.3, log=True),
            "min_child_weight": trial.suggest_float("xgb_min_child_weight", 1.0, 100.0, log=True),
            "subsample": trial.suggest_float("xgb_subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("xgb_colsample_bytree", 0.3, 1.0),
            "reg_lambda": trial.suggest_float("xgb_reg_lambda", 1e-3, 10.0, log=True),
        }

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        import xgboost as xgb

        model = xgb.XGBClassifier(
            n_estimators=1000, tree_method="hist", n_jobs=n_jobs, random_state=seed,
            early_stopping_rounds=EARLY_STOPPING_ROUNDS, eval_metric="logloss", **params,
        )
        model.fit(X, y, sample_weight=sample_weight, eval_set=[(X_val, y_val)], verbose=False)
        return FittedModel(self.name, params, model, int(model.best_iteration) + 1)

    def predict(self, estimator, X):
        return estimator.predict_proba(X)[:, 1]

    def save(self, estimator, folder):
        estimator.save_model(folder / self.filename)
        return [self.filename]

    def load(self, folder):
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(folder / self.filename)
        return model

    def importance(self, estimator, n_features):
        scores = estimator.get_booster().get_score(importance_type="gain")
        out = np.zeros(n_features)
        for key, value in scores.items():
            out[int(key[1:])] = value  # features are named f0, f1, ... for numpy input
        return out


class LightGBMFamily(Family):
    name, filename = "lightgbm", "model.txt"

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {
            "num_leaves": trial.suggest_int("lgb_num_leaves", 4, 64, log=True),
            "learning_rate": trial.suggest_float("lgb_learning_rate", 0.01, 0.3, log=True),
            "min_child_samples": trial.suggest_int("lgb_min_child_samples", 20, 500, log=True),
            "subsample": trial.suggest_float("lgb_subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("lgb_colsample_bytree", 0.3, 1.0),
            "reg_lambda": trial.suggest_float("lgb_reg_lambda", 1e-3, 10.0, log=True),
        }

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        import lightgbm as lgb

        model = lgb.LGBMClassifier(
            n_estimators=1000, n_jobs=n_jobs, random_state=seed, subsample_freq=1,
            deterministic=True, force_row_wise=True, verbose=-1, **params,
        )
        model.fit(X, y, sample_weight=sample_weight, eval_X=(X_val,), eval_y=(y_val,), eval_metric="binary_logloss",
                  callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
        return FittedModel(self.name, params, model.booster_, int(model.best_iteration_ or model.n_estimators))

    def predict(self, estimator, X):
        return estimator.predict(X, num_threads=1)

    def save(self, estimator, folder):
        estimator.save_model(str(folder / self.filename))
        return [self.filename]

    def load(self, folder):
        import lightgbm as lgb

        return lgb.Booster(model_file=str(folder / self.filename))

    def importance(self, estimator, n_features):
        return estimator.feature_importance(importance_type="gain").astype(float)


class CatBoostFamily(Family):
    """Ordered boosting (CatBoost's answer to target leakage in its own statistics) with
    ``has_time``: the rows are in time order, so its internal permutations keep that order
    instead of shuffling; early stopping on the same time-ordered slice as the others."""

    name, filename = "catboost", "model.cbm"

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {
            "depth": trial.suggest_int("cb_depth", 2, 8),
            "learning_rate": trial.suggest_float("cb_learning_rate", 0.01, 0.3, log=True),
            "l2_leaf_reg": trial.suggest_float("cb_l2_leaf_reg", 1.0, 30.0, log=True),
            "random_strength": trial.suggest_float("cb_random_strength", 0.1, 10.0, log=True),
            "rsm": trial.suggest_float("cb_rsm", 0.3, 1.0),
        }

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        from catboost import CatBoostClassifier

        model = CatBoostClassifier(
            iterations=1000, loss_function="Logloss", eval_metric="Logloss", boosting_type="Ordered",
            has_time=True, od_type="Iter", od_wait=EARLY_STOPPING_ROUNDS, use_best_model=True,
            thread_count=n_jobs, random_seed=seed, allow_writing_files=False, verbose=False, **params,
        )
        model.fit(X, y, sample_weight=sample_weight, eval_set=(X_val, y_val))
        return FittedModel(self.name, params, model, int(model.get_best_iteration()) + 1)

    def save(self, estimator, folder):
        estimator.save_model(str(folder / self.filename), format="cbm")
        return [self.filename]

    def load(self, folder):
        from catboost import CatBoostClassifier

        model = CatBoostClassifier()
        model.load_model(str(folder / self.filename), format="cbm")
        return model

    def importance(self, estimator, n_features):
        return np.asarray(estimator.get_feature_importance(), dtype=float)


class _SkopsFamily(Family):
    filename = "model.skops"

    def save(self, estimator, folder):
        import skops.io as sio

        sio.dump(estimator, folder / self.filename)
        return [self.filename]

    def load(self, folder):
        import skops.io as sio

        path = folder / self.filename
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
        if untrusted:
            raise ValueError(f"{path} contains types outside the trusted list: {untrusted}")
        return sio.load(path, trusted=SKOPS_TRUSTED)


class HistGBFamily(_SkopsFamily):
    name = "hist_gb"
    CHUNK = 25  # boosting rounds between early-stopping checks

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {
            "max_leaf_nodes": trial.suggest_int("hgb_max_leaf_nodes", 4, 64, log=True),
            "learning_rate": trial.suggest_float("hgb_learning_rate", 0.01, 0.3, log=True),
            "min_samples_leaf": trial.suggest_int("hgb_min_samples_leaf", 20, 500, log=True),
            "l2_regularization": trial.suggest_float("hgb_l2_regularization", 1e-3, 10.0, log=True),
        }

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        # scikit-learn's own early stopping draws a random (shuffled) validation split;
        # we grow the model in chunks and stop on our time-ordered slice instead.
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.metrics import log_loss

        model = HistGradientBoostingClassifier(
            max_iter=self.CHUNK, early_stopping=False, warm_start=True, random_state=seed, **params
        )
        best, best_iter, stale = np.inf, self.CHUNK, 0
        for rounds in range(self.CHUNK, 1000 + 1, self.CHUNK):
            model.set_params(max_iter=rounds)
            model.fit(X, y, sample_weight=sample_weight)
            loss = log_loss(y_val, model.predict_proba(X_val)[:, 1], labels=[0, 1])
            if loss < best - 1e-6:
                best, best_iter, stale = loss, rounds, 0
            else:
                stale += 1
                if stale * self.CHUNK >= EARLY_STOPPING_ROUNDS:
                    break
        final = HistGradientBoostingClassifier(max_iter=best_iter, early_stopping=False, random_state=seed, **params)
        final.fit(X, y, sample_weight=sample_weight)
        return FittedModel(self.name, params, final, best_iter)


class RandomForestFamily(_SkopsFamily):
    """Bagged trees: no boosting rounds, so nothing to stop early (the validation slice
    is not used); shallow, large-leaved trees keep the probabilities from collapsing to 0/1
    and the file small. Missing values are routed by the trees themselves."""

    name = "random_forest"
    TREES = 200

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {
            "max_depth": trial.suggest_int("rf_max_depth", 3, 12),
            "min_samples_leaf": trial.suggest_int("rf_min_samples_leaf", 20, 500, log=True),
            "max_features": trial.suggest_float("rf_max_features", 0.1, 0.7),
            "max_samples": trial.suggest_float("rf_max_samples", 0.3, 1.0),
        }

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=self.TREES, n_jobs=n_jobs, random_state=seed, **params)
        model.fit(X, y, sample_weight=sample_weight)
        return FittedModel(self.name, params, model, None)

    def importance(self, estimator, n_features):
        return np.asarray(estimator.feature_importances_, dtype=float)


class LogisticFamily(_SkopsFamily):
    name = "logistic"

    def suggest(self, trial: Trial) -> dict[str, Any]:
        return {"C": trial.suggest_float("logit_C", 1e-4, 10.0, log=True)}

    def fit(self, params, X, y, X_val, y_val, n_jobs, seed, sample_weight=None):
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        model = Pipeline([
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("logit", LogisticRegression(C=params["C"], max_iter=2000)),
        ])
        model.fit(X, y, logit__sample_weight=sample_weight)
        return FittedModel(self.name, params, model, None)

    def importance(self, estimator, n_features):
        return np.abs(estimator.named_steps["logit"].coef_[0])


FAMILIES: dict[str, Family] = {
    f.name: f for f in (XGBoostFamily(), LightGBMFamily(), CatBoostFamily(), HistGBFamily(), RandomForestFamily(),
                        LogisticFamily())
}


def load_model(family: str, folder: Path, params: dict[str, Any] | None = None,
               float32_inputs: bool = False) -> FittedModel:
    """Load a saved model of ``family`` from ``folder`` (never through pickle)."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown model family '{family}'. Known: {', '.join(FAMILIES)}")
    return FittedModel(family, params or {}, FAMILIES[family].load(Path(folder)), float32_inputs=float32_inputs)
