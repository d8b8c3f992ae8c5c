"""ONNX: a small, non-executable copy of a registered model, served with onnxruntime.

``ftml export onnx NAME VERSION`` converts the version's model, or each member of an
ensemble (the calibrator and an ensemble's combiner stay JSON: they are a few numbers, and a
revision must not need a new export), checks it against the
native model on real feature rows, and records ``model.onnx`` in the registry with its
sha256 like every other file. ``ml.gate.runtime = "onnx"`` then serves it: the model file
is a protobuf graph of standard operators, with no code in it; no custom operator library
is ever registered.

Parity: onnxruntime's tree ensembles and the scikit-learn converter take float32 inputs, so
the export is refused unless the largest |p_onnx - p_native| over the check rows is at
most ``PARITY_TOLERANCE``. Families whose converter cannot match the native model are
refused up front, with the reason.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ml.errors import FtmlError
from ml.models import FittedModel

logger = logging.getLogger("ftml.onnx")

ONNX_FILE = "model.onnx"
OPSET = 15  # the newest onnxmltools converts tree boosters to
PARITY_ROWS = 10_000
PARITY_TOLERANCE = 1e-6
CONVERTIBLE = ("xgboost", "lightgbm", "catboost", "logistic")
# Measured with the pinned converters (docs/ARCHITECTURE.md, "ONNX").
REFUSED = {
    "hist_gb": "skl2onnx cannot build a tree ensemble from scikit-learn 1.9's HistGradientBoostingClassifier",
    "random_forest": "the converted forest routes missing values differently from scikit-learn's trees "
                     "(|dp| up to 0.65 on rows with a NaN feature)",
}


class OnnxError(FtmlError, ValueError):
    """A model that cannot be exported or served as ONNX; the message says what to do."""


def refusal(family: str) -> str | None:
    """Why ``family`` cannot be exported, in one line (None: it can)."""
    if family in CONVERTIBLE:
        return None
    why = REFUSED.get(family, "no ONNX converter is known for it")
    return (f"{family} models cannot be exported to ONNX: {why}. Serve this version natively "
            f"(ml.gate.runtime \"native\"), or train with one of {', '.join(CONVERTIBLE)}.")


def has_onnx(folder: Path) -> bool:
    """Whether the version folder holds an ONNX export (of its model or its ensemble's members)."""
    return (folder / ONNX_FILE).is_file() or any(folder.glob(f"members/*/{ONNX_FILE}"))


def convert(model: FittedModel, n_features: int) -> bytes:
    """The model as a serialized ONNX graph: float32 input ``X`` [n, n_features]."""
    if why := refusal(model.family):
        raise OnnxError(why)
    est = model.estimator
    if model.family == "catboost":  # CatBoost writes ONNX itself
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ONNX_FILE
            est.save_model(str(path), format="onnx")
            return path.read_bytes()
    if model.family == "logistic":
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        graph = convert_sklearn(est, initial_types=[("X", FloatTensorType([None, n_features]))],
                                options={id(est): {"zipmap": False}}, target_opset={"": OPSET, "ai.onnx.ml": 3})
        return graph.SerializeToString()
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    inputs = [("X", FloatTensorType([None, n_features]))]
    if model.family == "lightgbm":
        graph = onnxmltools.convert_lightgbm(est, initial_types=inputs, zipmap=False, target_opset=OPSET)
    else:
        graph = onnxmltools.convert_xgboost(est, initial_types=inputs, target_opset=OPSET)
    return graph.SerializeToString()


class OnnxModel:
    """A model served by onnxruntime, with the ``FittedModel`` interface the bundle uses."""

    def __init__(self, family: str, graph: bytes | Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one candle at a time: threads cost more than they save
        options.inter_op_num_threads = 1
        source = str(graph) if isinstance(graph, Path) else graph
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a malformed graph: refused, never half-loaded
            raise OnnxError(f"onnxruntime cannot load the model: {str(err).splitlines()[0]}") from err
        self.family, self.params, self.best_iteration = family, {}, None
        self.input = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.output = next((n for n in names if "prob" in n.lower()), names[-1])

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], {self.input: np.asarray(X, dtype=np.float32)})[0]
        if isinstance(out, list):  # a ZipMap output: one {class: p} per row
            return np.array([row[1] for row in out], dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        return out[:, 1] if out.ndim == 2 else out


def open_export(folder: Path, relative: str, family: str, model_name: str | None = None) -> OnnxModel:
    """The exported ONNX file ``relative`` of a version folder, served; an OnnxError that says
    why there is none (the family cannot be exported, or it was not yet) and what to do."""
    path = Path(folder) / relative
    if not path.is_file():
        raise OnnxError(f"no {relative}. " + (refusal(family) or f"Export it first: `ftml export onnx "
                                                                  f"{model_name or 'NAME'} <version>`."))
    try:
        return OnnxModel(family, path)
    except OnnxError as err:
        raise OnnxError(f"{relative}: {err}") from err


def parity(native: FittedModel, served: OnnxModel, X: np.ndarray) -> float:
    """The largest |p_onnx - p_native| over the rows ``X``."""
    return float(np.max(np.abs(served.predict_raw(X) - native.predict_raw(X)))) if len(X) else 0.0


def feature_rows(cfg, ft: dict[str, Any], manifest: dict[str, Any], limit: int = PARITY_ROWS) -> np.ndarray:
    """Up to ``limit`` real feature rows of the model's pairs (the newest candles on disk), in
    the model's input order; the strategy's own indicator columns, not computed here, are NaN."""
    from ml.data import load_candles
    from ml.features import FeatureEngineer

    engineer = FeatureEngineer(cfg.features, manifest["timeframe"])
    pairs = list(manifest.get("pairs") or ft.get("pairs", []))  # a pair without candles on disk is skipped
    frames, _ = load_candles(ft["datadir"], pairs, manifest["timeframe"], data_format=ft.get("data_format", "feather"))
    per_pair = -(-limit // max(1, len(frames)))  # ceil: the pairs together give limit rows
    parts = []
    for frame in frames.values():
        features = engineer.features(frame.tail(per_pair + engineer.startup_candles))
        parts.append(features.reindex(columns=manifest["feature_names"]).tail(per_pair).to_numpy(dtype=np.float64))
    rows = np.concatenate(parts) if parts else np.empty((0, len(manifest["feature_names"])))
    return rows[~np.isnan(rows).all(axis=1)][:limit]


def export_onnx(cfg, ft: dict[str, Any], name: str, version: int, store: str | Path | None = None) -> dict[str, Any]:
    """Convert ``name`` v``version``, check parity on real rows, record ``model.onnx``."""
    from ml.bundle import load_bundle
    from ml.registry import IntegrityError, open_registry

    registry = open_registry(store or cfg.registry.path)
    entry = registry.version(name, version)
    if problems := registry.verify_version(entry):
        raise IntegrityError(f"Refusing to export {name} v{version}: {'; '.join(problems)}")
    bundle = load_bundle(registry.version_dir(entry))
    graphs, served = convert_bundle_model(bundle.model, len(bundle.feature_names))
    X = feature_rows(cfg, ft, bundle.manifest)
    if len(X) == 0:
        raise OnnxError(f"no candles of {name}'s pairs ({', '.join(bundle.manifest.get('pairs', []))}) in "
                        f"{ft['datadir']} to check the export against: download them first")
    # An ensemble is checked on its combined probability and on every member.
    worst = parity(bundle.model, served, X)
    members = getattr(bundle.model, "members", None)
    if members is not None:
        worst = max([worst, *(parity(m, s, X) for m, s in zip(members, served.members, strict=True))])
    details = {"file": ONNX_FILE, "files": list(graphs), "family": bundle.model.family, "opset": OPSET,
               "bytes": sum(len(g) for g in graphs.values()),
               "parity": {"rows": len(X), "max_abs_diff": worst, "tolerance": PARITY_TOLERANCE}}
    if worst > PARITY_TOLERANCE:
        raise OnnxError(f"the ONNX copy of {name} v{version} ({bundle.model.family}) differs from the native model "
                        f"by up to {worst:.2e} in p on {len(X)} rows (tolerance {PARITY_TOLERANCE:g}): not recorded")
    registry.add_export(name, version, graphs, details)
    logger.info("Exported %s v%s as ONNX (%d bytes in %d file(s)); max |dp| %.1e on %d rows.", name, version,
                details["bytes"], len(graphs), worst, len(X))
    return {"model": name, "version": version, **details}


def convert_bundle_model(model, n_features: int) -> tuple[dict[str, bytes], Any]:
    """The ONNX files of a bundle's model ({file name in the version folder: graph}) and the
    model they serve; an ensemble gets one file per member, its combiner stays JSON."""
    from ml.ensemble import EnsembleModel, member_dir

    if not isinstance(model, EnsembleModel):
        graph = convert(model, n_features)
        return {ONNX_FILE: graph}, OnnxModel(model.family, graph)
    for i, member in enumerate(model.members):
        if why := refusal(member.family):
            raise OnnxError(f"ensemble member {i} ({member.family}): {why}")
    graphs = {f"{member_dir(i, m.family)}/{ONNX_FILE}": convert(m, n_features) for i, m in enumerate(model.members)}
    served = [OnnxModel(m.family, g) for m, g in zip(model.members, graphs.values(), strict=True)]
    return graphs, EnsembleModel(served, model.combiner, model.trials)
