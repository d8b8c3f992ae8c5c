"""Probability calibration fitted on the calibration block only, stored as JSON.

* sigmoid (Platt): p = 1 / (1 + exp(-(a * logit(p_raw) + b))): two numbers;
* isotonic: a monotone step function, stored as its two threshold arrays; only with at
  least ``MIN_ISOTONIC_ROWS`` rows, because with fewer it overfits the block;
* constant: the block's hit rate for every row: what is left when the model's scores
  carry no information out of sample. Competing against it keeps a spurious slope
  fitted on noise from spreading probabilities (and EV-gate entries) on a market with
  no signal.
* identity: the model's own probabilities, unchanged: nothing fitted, so nothing to
  overfit. A model trained with log loss on a market that did not move is often
  calibrated already, and a fitted map then only adds noise.

The method is chosen by log loss on the calibration block with time-ordered cross-fitting
(fit on one half, score on the other, both ways), so the choice is not made on the rows
that fitted it, and a more flexible map must beat a simpler one by two standard errors;
the chosen method is then refitted on the whole block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

MIN_ISOTONIC_ROWS = 1000
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass
class SigmoidCalibrator:
    a: float = 1.0
    b: float = 0.0
    method: str = "sigmoid"

    def fit(self, p_raw: np.ndarray, y: np.ndarray) -> SigmoidCalibrator:
        model = LogisticRegression(C=1e6, max_iter=1000)
        model.fit(_logit(p_raw).reshape(-1, 1), np.asarray(y, dtype=int))
        self.a, self.b = float(model.coef_[0, 0]), float(model.intercept_[0])
        return self

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(p_raw) + self.b)))

    def to_dict(self) -> dict:
        return {"method": "sigmoid", "a": self.a, "b": self.b}


@dataclass
class IsotonicCalibrator:
    x: list[float] | None = None
    y: list[float] | None = None
    method: str = "isotonic"

    def fit(self, p_raw: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        if len(p_raw) < MIN_ISOTONIC_ROWS:
            raise ValueError(
                f"Isotonic calibration needs at least {MIN_ISOTONIC_ROWS} calibration rows, got {len(p_raw)}; "
                "use sigmoid."
            )
        iso = IsotonicRegression(out_of_bounds="clip", y_min=EPS, y_max=1 - EPS)
        iso.fit(np.asarray(p_raw, dtype=np.float64), np.asarray(y, dtype=np.float64))
        self.x, self.y = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        return self

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        if self.x is None:
            raise RuntimeError("IsotonicCalibrator is not fitted: call fit first.")
        return np.interp(np.asarray(p_raw, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"method": "isotonic", "x": self.x, "y": self.y}


@dataclass
class ConstantCalibrator:
    p: float = 0.5
    method: str = "constant"

    def fit(self, p_raw: np.ndarray, y: np.ndarray) -> ConstantCalibrator:
        self.p = float(np.clip(np.mean(y), EPS, 1 - EPS))
        return self

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        return np.full(len(p_raw), self.p)

    def to_dict(self) -> dict:
        return {"method": "constant", "p": self.p}


@dataclass
class IdentityCalibrator:
    method: str = "identity"

    def fit(self, p_raw: np.ndarray, y: np.ndarray) -> IdentityCalibrator:
        return self

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(p_raw, dtype=np.float64), EPS, 1 - EPS)

    def to_dict(self) -> dict:
        return {"method": "identity"}


@dataclass
class RevisedCalibrator:
    """A recalibration revision (ml.recalibrate): ``p = 1 / (1 + exp(-(a * logit(base(p_raw)) + b)))``
    on top of the calibrator the model was trained with (``base``, never itself a revision,
    so revisions do not nest). ``a = 1`` is a pure shift of the base rate."""

    base: SigmoidCalibrator | IsotonicCalibrator | ConstantCalibrator | IdentityCalibrator
    a: float = 1.0
    b: float = 0.0
    method: str = "revised"

    def transform(self, p_raw: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(self.base.transform(p_raw)) + self.b)))

    def to_dict(self) -> dict:
        return {"method": "revised", "a": self.a, "b": self.b, "base": self.base.to_dict()}


Calibrator = SigmoidCalibrator | IsotonicCalibrator | ConstantCalibrator | IdentityCalibrator | RevisedCalibrator


def has_no_ranking(cal: Calibrator) -> bool:
    """Every row gets the same probability: nothing to select on."""
    if isinstance(cal, RevisedCalibrator):
        return cal.a == 0 or has_no_ranking(cal.base)
    return cal.method == "constant"


def to_json(cal: Calibrator) -> str:
    return json.dumps(cal.to_dict())


def from_json(text: str) -> Calibrator:
    """Rebuild a calibrator from its JSON; unknown methods or shapes are refused."""
    return _from_dict(json.loads(text))


def _from_dict(data: dict, nested: bool = False) -> Calibrator:
    if not isinstance(data, dict):
        raise ValueError("a calibrator must be a JSON object")
    method = data.get("method")
    if method == "revised" and not nested:
        return RevisedCalibrator(_from_dict(data["base"], nested=True), float(data["a"]), float(data["b"]))
    if method == "sigmoid":
        return SigmoidCalibrator(float(data["a"]), float(data["b"]))
    if method == "constant":
        return ConstantCalibrator(float(data["p"]))
    if method == "identity":
        return IdentityCalibrator()
    if method == "isotonic":
        x, y = [float(v) for v in data["x"]], [float(v) for v in data["y"]]
        if len(x) != len(y) or not x:
            raise ValueError("isotonic calibrator JSON needs two arrays of the same, non-zero length")
        return IsotonicCalibrator(x, y)
    raise ValueError(f"Unknown calibration method {method!r}; expected 'sigmoid', 'isotonic', 'constant', 'identity' "
                     "or 'revised' (not nested)")


def cross_fit_row_losses(make, p_raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log loss of ``make()`` fitted on one time-half and scored on the other, both ways.

    ``make()`` returns anything with ``fit(rows, y)`` and ``transform(rows)``; ``p_raw`` may be
    one column of probabilities or several (an ensemble's members, ``ml.ensemble``)."""
    half = len(p_raw) // 2
    losses = np.empty(len(p_raw))
    for fit_part, score_part in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
        p = np.clip(make().fit(p_raw[fit_part], y[fit_part]).transform(p_raw[score_part]), EPS, 1 - EPS)
        losses[score_part] = -(y[score_part] * np.log(p) + (1 - y[score_part]) * np.log(1 - p))
    return losses


# Simplest first: a more flexible map must earn its place. The identity fits nothing but
# must still beat the constant (the model must show it knows more than the base rate).
COMPLEXITY_ORDER = ("constant", "identity", "sigmoid", "isotonic")
MAKERS = {"sigmoid": SigmoidCalibrator, "isotonic": IsotonicCalibrator, "constant": ConstantCalibrator,
          "identity": IdentityCalibrator}


def parsimonious_choice(losses: dict[str, np.ndarray]) -> str:
    """The candidate to use among ``losses`` (per-row cross-fitted log losses, simplest
    first): a later one replaces the best so far only when it lowers the loss by more than
    two standard errors of the paired per-row difference."""
    names = list(losses)
    best = names[0]
    for name in names[1:]:
        diff = losses[name] - losses[best]
        if diff.mean() < -2 * diff.std() / np.sqrt(len(diff)):
            best = name
    return best


def choose_and_fit(p_raw: np.ndarray, y: np.ndarray,
                   methods=COMPLEXITY_ORDER) -> tuple[Calibrator, dict]:
    """Pick a method by cross-fitted log loss; refit it on the whole block.

    ``p_raw`` and ``y`` must be the calibration block in time order. A more flexible
    method replaces a simpler one only when it lowers the cross-fitted log loss by more
    than two standard errors of the paired per-row difference, so noise alone never
    buys a slope (or steps).
    """
    p_raw, y = np.asarray(p_raw, dtype=np.float64), np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError("The calibration block has only one class: use a longer timerange.")
    # The sign of the model's relation to the outcome on this block: a sigmoid with slope
    # <= 0 would *invert* the ranking (a raw AUC of 0.227 reported as 0.773), so it never
    # competes; the slope is reported and gated (run_gates: calibration_slope).
    slope = SigmoidCalibrator().fit(p_raw, y).a
    # Each half must itself be large enough for isotonic.
    # Cross-fitting fits on each time-half: a half with one class (rare losses, say) can fit
    # nothing but a constant, so only the constant competes then.
    half = len(y) // 2
    both_halves = len(np.unique(y[:half])) == 2 and len(np.unique(y[half:])) == 2
    # The identity keeps the base rate of the rows the model was fitted on. If the block
    # already shows another one (mean p off by more than 2 SE), the market has moved since
    # and the identity would carry the old rate forward; cross-fitting cannot see that,
    # since a map fitted on one half pays for a drift between the halves and the identity
    # (fitted on neither) does not.
    identity_gap = float(p_raw.mean() - y.mean())
    identity_ok = abs(identity_gap) <= 2 * np.sqrt(np.sum(p_raw * (1 - p_raw))) / len(p_raw)
    allowed = [m for m in COMPLEXITY_ORDER if m in methods
               and (m != "isotonic" or len(p_raw) // 2 >= MIN_ISOTONIC_ROWS)
               and (m not in ("sigmoid", "identity") or slope > 0)
               and (m != "identity" or identity_ok)
               and (m == "constant" or both_halves)]
    losses = {m: cross_fit_row_losses(MAKERS[m], p_raw, y) for m in allowed}
    best = parsimonious_choice(losses)
    scores = {m: float(v.mean()) for m, v in losses.items()}
    info = {"method": best, "cross_fit_log_loss": scores, "slope": float(slope), "identity_gap": identity_gap}
    if not both_halves:
        info["refused"] = "one half of the calibration block has a single class: only a constant can be fitted"
    elif slope <= 0:
        info["refused"] = f"sigmoid slope {slope:.3f} <= 0 would invert the model's ranking"
    return MAKERS[best]().fit(p_raw, y), info


@dataclass
class ShiftCalibrator(SigmoidCalibrator):
    """A sigmoid whose slope stays 1: only the base rate moves (calibration-in-the-large)."""

    def fit(self, p_raw: np.ndarray, y: np.ndarray) -> ShiftCalibrator:
        z, y = _logit(p_raw), np.asarray(y, dtype=np.float64)
        self.a, self.b = 1.0, 0.0
        for _ in range(50):  # Newton's method on the one intercept
            p = 1.0 / (1.0 + np.exp(-(z + self.b)))
            step = float(np.sum(y - p) / max(np.sum(p * (1 - p)), 1e-12))
            self.b += step
            if abs(step) < 1e-10:
                break
        return self


def revise(base: Calibrator, p_raw: np.ndarray, y: np.ndarray) -> tuple[RevisedCalibrator, dict]:
    """Refit the calibration of a promoted model on recent outcomes, keeping its ranking.

    The model's ranking was validated when it was promoted; what drifts first is the base
    rate. Two candidates on top of the training calibrator ``base``: a shift of the base
    rate in logit space (one number: calibration-in-the-large), and a logistic
    recalibration (slope and shift). The slope must beat the shift by two standard errors of
    the time-ordered cross-fitted log loss, and be positive: a recalibration never
    inverts or drops the ranking (if the ranking is gone, retrain). ``p_raw`` and ``y`` in
    time order.
    """
    if isinstance(base, RevisedCalibrator):
        base = base.base
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError("the recent outcomes hold only one class: nothing to recalibrate on")
    # Both maps act on the training calibrator's probabilities: the sigmoid's
    # a*logit(p) + b is the logistic recalibration, the shift its a = 1 case.
    p_base = base.transform(np.asarray(p_raw, dtype=np.float64))
    losses = {"shift": cross_fit_row_losses(ShiftCalibrator, p_base, y),
              "slope": cross_fit_row_losses(SigmoidCalibrator, p_base, y)}
    slope = SigmoidCalibrator().fit(p_base, y)
    use_slope = slope.a > 0 and parsimonious_choice(losses) == "slope"
    a, b = (slope.a, slope.b) if use_slope else (1.0, ShiftCalibrator().fit(p_base, y).b)
    info = {"method": "slope" if use_slope else "shift", "a": a, "b": b,
            "cross_fit_log_loss": {k: float(v.mean()) for k, v in losses.items()}}
    return RevisedCalibrator(base, a, b), info
