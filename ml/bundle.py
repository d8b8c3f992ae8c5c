"""A self-describing model bundle: one folder, no executable formats.

    bundle.json      what the model is: family, params, features, feature_set_id, the
                     strategy and sides whose trades it learnt, their outcome returns,
                     pairs, time ranges, train_end, metrics summary
    model.*          the model in its library's native format (see ml.models), or, for an
                     ensemble, ensemble.json plus members/<i>-<family>/model.* (ml.ensemble)
    calibrator.json  the calibration map
    calibrator.r<n>.json  recalibration revisions, added by the registry (ftml recalibrate)
    metrics.json     the full evaluation report
    plots/*.png      reliability diagram, feature importance, optimisation history

Loading reads only these names; any other file in the folder (a planted pickle, say) is
never opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import calibration, jsonsafe
from ml.errors import FtmlError
from ml.models import FAMILIES, FittedModel, load_model

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
CALIBRATOR = "calibrator.json"
METRICS = "metrics.json"
ENSEMBLE = "ensemble"  # the family of an ml.ensemble.EnsembleModel: members listed in ensemble.json


class BundleError(FtmlError, ValueError):
    """A bundle folder that cannot be used; the message names the file."""


@dataclass
class Bundle:
    manifest: dict[str, Any]
    model: FittedModel
    calibrator: calibration.Calibrator

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    @property
    def feature_set_id(self) -> str:
        return str(self.manifest["feature_set_id"])

    def outcome_returns(self, side: str = "long") -> dict[str, float]:
        """Mean realised return of a win and of a loss (calibration block), for the EV gate.
        Bundles from before they were measured fall back to what the fixed barriers imply."""
        return outcome_returns_of(self.manifest, side)

    def predict_raw(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            X = X[self.feature_names].to_numpy(dtype=np.float64)
        return self.model.predict_raw(X)

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Calibrated probability that the trade wins, one per row, vectorised."""
        return self.calibrator.transform(self.predict_raw(X))


def outcome_returns_of(manifest: dict[str, Any], side: str = "long") -> dict[str, float]:
    """``outcome_returns`` of a bundle manifest or registry entry (see Bundle.outcome_returns)."""
    measured = (manifest.get("outcome_returns") or {}).get(side)
    if not measured:
        # Models of earlier versions learnt fixed-barrier labels and carry no measured returns.
        raise BundleError(f"model {manifest.get('model_name') or manifest.get('name')} has no measured {side} "
                          "outcome returns (trained on fixed-barrier labels by an earlier version): retrain it on "
                          "the strategy's own trades (ftml train --strategy ...).")
    return {"win": float(measured["win"]), "loss": float(measured["loss"])}


def save_bundle(folder: Path, model: FittedModel, calibrator: calibration.Calibrator,
                manifest: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Write every file of the bundle; return the file names (relative to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = model.save(folder)
    (folder / CALIBRATOR).write_text(calibration.to_json(calibrator))
    (folder / METRICS).write_text(jsonsafe.dumps(metrics, indent=2))
    manifest = {**manifest, "format": BUNDLE_FORMAT, "family": model.family, "params": model.params,
                "inputs": "float32" if model.float32_inputs else "float64",
                "best_iteration": model.best_iteration, "model_files": files,
                "calibrator_file": CALIBRATOR, "metrics_file": METRICS}
    (folder / MANIFEST).write_text(jsonsafe.dumps(manifest, indent=2))
    return [*files, CALIBRATOR, METRICS, MANIFEST]


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: not a model bundle") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, this version reads {BUNDLE_FORMAT}")
    if manifest.get("family") not in FAMILIES and manifest.get("family") != ENSEMBLE:
        raise BundleError(f"{path}: unknown model family {manifest.get('family')!r}")
    return manifest


def load_bundle(folder: str | Path, calibrator_file: str | None = None, runtime: str = "native") -> Bundle:
    """Load model and calibrator from the known file names only (never pickle).

    ``calibrator_file``: a recalibration revision's file (``calibrator.r<n>.json``, named by
    the registry) instead of the calibrator the model was trained with. ``runtime="onnx"``:
    the model from ``model.onnx`` (``ftml export onnx``) through onnxruntime.
    """
    folder = Path(folder)
    if calibrator_file is not None and not re.fullmatch(r"calibrator\.r[0-9]+\.json", calibrator_file):
        raise BundleError(f"{folder}: refusing calibrator file {calibrator_file!r} (expected calibrator.r<n>.json)")
    manifest = read_manifest(folder)
    try:
        model = _load_model(folder, manifest, runtime)
    except BundleError:
        raise
    except Exception as err:
        raise BundleError(f"{folder / model_file(manifest['family'])}: cannot load model: {err}") from err
    try:
        calibrator = calibration.from_json((folder / (calibrator_file or CALIBRATOR)).read_text())
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:  # any malformed JSON: refused
        raise BundleError(f"{folder / (calibrator_file or CALIBRATOR)}: cannot load calibrator: {err}") from err
    return Bundle(manifest, model, calibrator)


def float32_inputs(manifest: dict[str, Any]) -> bool:
    """Whether the model was fitted on float32-rounded inputs (bundles without ``inputs``: no)."""
    return manifest.get("inputs") == "float32"


def model_file(family: str) -> str:
    """The file that describes the model: its native file, or an ensemble's member list."""
    from ml.ensemble import ENSEMBLE_FILE

    return ENSEMBLE_FILE if family == ENSEMBLE else FAMILIES[family].filename


def _load_model(folder: Path, manifest: dict[str, Any], runtime: str):
    if runtime not in ("native", "onnx"):
        raise BundleError(f"unknown model runtime {runtime!r}: native or onnx")
    if manifest["family"] == ENSEMBLE:
        from ml.ensemble import load_ensemble

        return load_ensemble(folder, runtime, float32_inputs=float32_inputs(manifest))
    if runtime == "native":
        return load_model(manifest["family"], folder, manifest.get("params"), float32_inputs(manifest))
    from ml.onnx_export import ONNX_FILE, OnnxError, open_export

    try:
        return open_export(folder, ONNX_FILE, manifest["family"], manifest.get("model_name"))
    except OnnxError as err:
        raise BundleError(f"{folder}: {err}") from err
