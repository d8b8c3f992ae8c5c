"""Ensembles of the best trials of different families, chosen only when they earn it.

Members are the best complete trial of each family in the study, the top ``k`` by
out-of-fold log loss (``ml.training.ensemble_members``). Each member is refitted on every
purged walk-forward fold of the training block and predicts that fold's validation rows:
the *out-of-fold* predictions. Nothing below ever sees a member's prediction on rows it
was fitted on.

Candidates, simplest first, all fitted on the out-of-fold predictions:

* ``constant``: the base rate (the model knows nothing);
* ``single``: the best member alone, through a Platt sigmoid;
* ``average``: each member through its own Platt sigmoid, then averaged: an average of
  calibrated probabilities;
* ``stack``: a logistic meta-learner on the members' logits (a weight per member).

A candidate whose fit on all out-of-fold rows puts a weight <= 0 on a member never
competes: it would invert that member's ranking (seen on a null market: per-member slopes
of -1.9 and -0.6 "won" by fitting noise). Non-negative weights are also the classic
constraint on stacked models (Breiman 1996).

The choice is the calibration layer's rule (``ml.calibration.choose_and_fit``): each is
scored by time-ordered cross-fitting (fit on one half of the out-of-fold rows, score the
other, both ways), and a later candidate replaces the current best only when it lowers
the per-row log loss by more than two standard errors of the paired difference. So on a
market with no signal no ensemble is chosen over the constant, and an ensemble of
near-copies is not chosen over its best member. The chosen ensemble's combined output is
then calibrated on the calibration block like any model's.

Saved as ``ensemble.json`` (method, combiner numbers, member families and parameters) plus
each member's own native file under ``members/<i>-<family>/``; no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from sklearn.linear_model import LogisticRegression

from ml.calibration import EPS, SigmoidCalibrator, _logit, cross_fit_row_losses, parsimonious_choice
from ml.models import FAMILIES, FittedModel, load_model
from ml.tuning import TuningData, fit_family, trial_family, trial_params

logger = logging.getLogger(__name__)
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
CANDIDATES = ("constant", "single", "average", "stack")  # simplest first
COMBINED = ("average", "stack")  # the candidates that are ensembles
MAX_MEMBERS = 6


def member_dir(index: int, family: str) -> str:
    """A member's folder inside the bundle; built from its index and family, never read from a file."""
    return f"{MEMBERS_DIR}/{index}-{family}"


@dataclass
class Combiner:
    """How the members' raw probabilities become one: ``average`` (per-member sigmoids
    ``a``/``b``, then the mean) or ``stack`` (``p = sigmoid(sum w_i logit(p_i) + b)``)."""

    method: str
    a: list[float] = field(default_factory=list)  # average: per-member slopes; stack: weights
    b: list[float] = field(default_factory=list)  # average: per-member intercepts; stack: [intercept]

    def fit(self, P: np.ndarray, y: np.ndarray) -> Combiner:
        if self.method == "average":
            fits = [SigmoidCalibrator().fit(P[:, i], y) for i in range(P.shape[1])]
            self.a, self.b = [f.a for f in fits], [f.b for f in fits]
        elif self.method == "stack":
            # Almost unpenalised: a handful of weights on thousands of rows; the 2-SE choice,
            # not a penalty, keeps a stack that only fits noise out.
            meta = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(P), np.asarray(y, dtype=int))
            self.a, self.b = [float(v) for v in meta.coef_[0]], [float(meta.intercept_[0])]
        else:
            raise ValueError(f"unknown ensemble method {self.method!r}: average or stack")
        return self

    def combine(self, P: np.ndarray) -> np.ndarray:
        Z = _logit(P)
        if self.method == "average":
            return np.mean(1.0 / (1.0 + np.exp(-(Z * np.asarray(self.a) + np.asarray(self.b)))), axis=1)
        return 1.0 / (1.0 + np.exp(-(Z @ np.asarray(self.a) + self.b[0])))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: Any, members: int) -> Combiner:
        if not isinstance(data, dict) or data.get("method") not in COMBINED:
            raise ValueError("the combiner must be an object with method 'average' or 'stack'")
        a, b = data.get("a"), data.get("b")
        want_b = members if data["method"] == "average" else 1
        if not (isinstance(a, list) and isinstance(b, list) and len(a) == members and len(b) == want_b):
            raise ValueError(f"the {data['method']} combiner needs {members} weights and {want_b} intercept(s)")
        numbers = [float(v) for v in a + b]
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("the combiner's numbers must be finite")
        return cls(data["method"], numbers[:members], numbers[members:])


class _Candidate:
    """One of ``CANDIDATES`` as something to cross-fit: fit on (P, y), predict from P. The
    ``single`` candidate is an average of one member: the best member's own sigmoid."""

    def __init__(self, name: str):
        self.name = name

    def _columns(self, P: np.ndarray) -> np.ndarray:
        return P[:, :1] if self.name == "single" else P

    def fit(self, P: np.ndarray, y: np.ndarray) -> _Candidate:
        if self.name == "constant":
            self.p = float(np.clip(np.mean(y), EPS, 1 - EPS))
        else:
            method = "average" if self.name == "single" else self.name
            self.combiner = Combiner(method).fit(self._columns(P), y)
        return self

    def slopes(self) -> list[float]:
        """The fitted weight on each member (none for the constant)."""
        return [] if self.name == "constant" else list(self.combiner.a)

    def transform(self, P: np.ndarray) -> np.ndarray:
        if self.name == "constant":
            return np.full(len(P), self.p)
        return self.combiner.combine(self._columns(P))


def choose(P: np.ndarray, y: np.ndarray) -> tuple[str, dict[str, Any]]:
    """The candidate to use, by the 2-SE parsimony rule on out-of-fold rows in time order.

    ``P``: one column of raw probabilities per member, the best member first."""
    y = np.asarray(y, dtype=int)
    half = len(y) // 2
    if len(np.unique(y[:half])) < 2 or len(np.unique(y[half:])) < 2:
        return "constant", {"chosen": "constant", "refused": "one half of the out-of-fold rows has a single class"}
    allowed = [c for c in CANDIDATES if c not in COMBINED or P.shape[1] >= 2]
    # A weight <= 0 on a member inverts (or drops) its ranking: out of fold, the member
    # predicted the opposite of what happened, which is noise fitted, not signal. Such a
    # candidate never competes, as a calibrator with slope <= 0 never does.
    inverting = {c: [round(a, 4) for a in slopes] for c in allowed
                 if (slopes := _Candidate(c).fit(P, y).slopes()) and min(slopes) <= 0}
    allowed = [c for c in allowed if c not in inverting]
    losses = {c: cross_fit_row_losses(lambda c=c: _Candidate(c), P, y) for c in allowed}
    best = parsimonious_choice(losses)
    info = {"chosen": best, "cross_fit_log_loss": {c: float(v.mean()) for c, v in losses.items()}, "rows": int(len(y))}
    if inverting:
        info["inverting"] = inverting  # candidates refused: their member weights on all out-of-fold rows
    return best, info


@dataclass
class Member:
    trial: int
    family: str
    params: dict[str, Any]
    oof_log_loss: float


def top_members(study: optuna.Study, families: list[str], k: int) -> list[Member]:
    """The best complete trial of each family in ``families``, best first, at most ``k``."""
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        family = trial_family(t, families)
        if family in families and (family not in best or t.value < best[family].value):
            best[family] = t
    ranked = sorted(best.values(), key=lambda t: t.value)[:k]
    return [Member(t.number, *trial_params(t, families), float(t.value)) for t in ranked]


def out_of_fold(members: list[Member], data: TuningData, n_jobs: int, on_fit=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, P): each member's predictions on every fold's validation rows, from its fit on
    that fold's (purged) training rows; rows in time order. ``on_fit()`` after each fit."""
    rows = np.concatenate([val for _, val in data.folds])
    P = np.empty((len(rows), len(members)))
    start = 0
    for train, val in data.folds:
        for j, m in enumerate(members):
            model = fit_family(m.family, m.params, data.X, data.y, data.times, train, n_jobs, data.seed, data.weights)
            P[start:start + len(val), j] = model.predict_raw(data.X[val])
            if on_fit:
                on_fit()
        start += len(val)
    order = np.argsort(data.times[rows], kind="stable")
    return rows[order], P[order]


@dataclass
class Plan:
    """What :func:`plan` decided: ``chosen`` among ``CANDIDATES``; ``combiner`` when an ensemble won."""

    chosen: str
    members: list[Member]
    combiner: Combiner | None
    info: dict[str, Any]


def plan(study: optuna.Study, data: TuningData, families: list[str], k: int, n_jobs: int, on_fit=None) -> Plan:
    """Choose between the best single model and an ensemble of the top ``k`` families."""
    members = top_members(study, families, min(k, MAX_MEMBERS))
    described = [{"trial": m.trial, "family": m.family, "oof_log_loss": m.oof_log_loss} for m in members]
    if len(members) < 2:
        return Plan("single", members, None, {"chosen": "single", "members": described,
                                              "refused": "the study has complete trials of fewer than two families"})
    logger.info("Ensemble: out-of-fold predictions of the best %s trials, %d fits ...",
                "/".join(m.family for m in members), len(members) * len(data.folds))
    rows, P = out_of_fold(members, data, n_jobs, on_fit)
    y = data.y[rows]
    chosen, info = choose(P, y)
    combiner = Combiner(chosen).fit(P, y) if chosen in COMBINED else None
    info = {**info, "members": described, **({"combiner": combiner.to_dict()} if combiner else {})}
    return Plan(chosen, members, combiner, info)


class EnsembleModel:
    """Members (``FittedModel``, or ``OnnxModel`` when served from ONNX) and their combiner,
    with the ``FittedModel`` interface the bundle, the gate and the registry use."""

    family = "ensemble"
    best_iteration = None
    float32_inputs = True  # every member was fitted by ml.tuning.fit_family

    def __init__(self, members: list, combiner: Combiner, trials: list[int] | None = None):
        self.members, self.combiner = members, combiner
        self.trials = trials or [None] * len(members)

    @property
    def params(self) -> dict[str, Any]:
        return {"method": self.combiner.method,
                "members": [{"family": m.family, "params": m.params, "trial": t}
                            for m, t in zip(self.members, self.trials, strict=True)]}

    def member_raw(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([m.predict_raw(X) for m in self.members])

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        return self.combiner.combine(self.member_raw(X))

    def save(self, folder: Path) -> list[str]:
        folder = Path(folder)
        names = []
        for i, m in enumerate(self.members):
            sub = member_dir(i, m.family)
            (folder / sub).mkdir(parents=True, exist_ok=True)
            names += [f"{sub}/{name}" for name in m.save(folder / sub)]
        spec = {**self.params, "combiner": self.combiner.to_dict()}
        (folder / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2))
        return [ENSEMBLE_FILE, *names]

    def importance(self, n_features: int) -> np.ndarray:
        """The members' importances, each scaled to sum 1, averaged."""
        parts = [np.asarray(m.importance(n_features), dtype=float) for m in self.members]
        return np.mean([p / p.sum() if p.sum() > 0 else p for p in parts], axis=0)


def read_spec(folder: Path) -> dict[str, Any]:
    """``ensemble.json``, checked: known families, a combiner that fits the member count."""
    spec = json.loads((Path(folder) / ENSEMBLE_FILE).read_text())
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
        raise ValueError(f"{ENSEMBLE_FILE} must list 2 to {MAX_MEMBERS} members")
    for m in members:
        if not isinstance(m, dict) or m.get("family") not in FAMILIES:
            raise ValueError(f"{ENSEMBLE_FILE}: unknown member family {m.get('family') if isinstance(m, dict) else m!r}")
    spec["combiner"] = Combiner.from_dict(spec.get("combiner"), len(members))
    return spec


def load_ensemble(folder: Path, runtime: str = "native", float32_inputs: bool = True) -> EnsembleModel:
    """Every member from its own known file (``runtime="onnx"``: its ``model.onnx``)."""
    spec = read_spec(folder)
    members = []
    for i, m in enumerate(spec["members"]):
        sub = member_dir(i, m["family"])
        if runtime == "onnx":
            from ml.onnx_export import ONNX_FILE, open_export

            members.append(open_export(folder, f"{sub}/{ONNX_FILE}", m["family"]))
        else:
            members.append(load_model(m["family"], Path(folder) / sub, m.get("params"), float32_inputs))
    return EnsembleModel(members, spec["combiner"], [m.get("trial") for m in spec["members"]])


def fit_members(members: list[Member], data: TuningData, n_jobs: int, first: FittedModel | None = None) -> list:
    """Each member refitted on the whole training block (``first``: the best member, already refitted)."""
    everything = np.arange(len(data.y))
    fitted = [first] if first is not None else []
    for m in members[len(fitted):]:
        fitted.append(fit_family(m.family, m.params, data.X, data.y, data.times, everything, n_jobs, data.seed,
                                 data.weights))
    return fitted
