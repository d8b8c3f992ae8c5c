"""`ftml export onnx`: a non-executable copy of a registered model, served by onnxruntime."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ml.bundle import load_bundle
from ml.cli import freqtrade_settings
from ml.config import load
from ml.onnx_export import CONVERTIBLE, PARITY_ROWS, REFUSED, export_onnx, feature_rows
from ml.predictor import ProductionModel
from ml.registry import IntegrityError, RegistryError, open_registry
from ml.train import train
from tests.conftest import run_ftml, strategy_project, train_request
from tests.test_training import PickleBomb

PAIRS = ["ETH/BTC", "LTC/BTC", "XMR/BTC"]  # 3 x 4000 candles: more than 10,000 feature rows


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    strategy_project(root, PAIRS, 4000, "planted", 7, ml={"training": {"families": ["logistic"], "trials": 1}})
    return root


def registered(root: Path, family: str) -> tuple[str, int]:
    config = json.loads((root / "config.json").read_text())
    config["ml"]["training"]["families"] = [family]
    (root / f"config-{family}.json").write_text(json.dumps(config))
    cfg = load(root / f"config-{family}.json")
    summary = train(cfg, train_request(root, output=f"bundle-{family}", study=family))
    entry = open_registry(cfg.registry.path).register(summary["bundle"], f"m_{family}")
    return f"m_{family}", entry["id"]


@pytest.mark.parametrize("family", CONVERTIBLE)
def test_every_convertible_family_matches_its_native_model_on_10000_rows(market, family):
    name, version = registered(market, family)
    cfg, ft = load(market / "config.json"), freqtrade_settings(market / "config.json")
    result = export_onnx(cfg, ft, name, version)
    assert result["parity"]["rows"] == PARITY_ROWS and result["parity"]["max_abs_diff"] <= 1e-6
    registry = open_registry(cfg.registry.path)
    entry = registry.version(name, version)
    assert entry["exports"]["onnx"]["parity"]["max_abs_diff"] == result["parity"]["max_abs_diff"]
    assert "model.onnx" in entry["files"] and registry.verify_version(entry) == []
    # Served: the same probabilities as the native model (calibrator included), on fresh rows,
    # and no pickle planted next to it is ever opened.
    folder = registry.version_dir(entry)
    marker = market / f"pickle-opened-{family}"
    (folder / "model.pkl").write_bytes(pickle.dumps(PickleBomb(marker)))
    X = feature_rows(cfg, ft, load_bundle(folder).manifest)
    assert len(X) == PARITY_ROWS
    native, served = load_bundle(folder), load_bundle(folder, runtime="onnx")
    assert type(served.model).__name__ == "OnnxModel"
    assert np.max(np.abs(served.predict_proba(X) - native.predict_proba(X))) <= 1e-6
    assert not marker.exists()
    (folder / "model.pkl").unlink()


def test_the_gate_serves_onnx_verified_and_refuses_what_does_not_convert(market):
    name, version = registered(market, "lightgbm")
    cfg = load(market / "config.json")
    registry = open_registry(cfg.registry.path)
    registry.promote(name, version, force=True, reason="test")
    with pytest.raises(Exception, match="no model.onnx"):  # not exported yet: fail closed, say what to do
        ProductionModel.load(registry, name, runtime="onnx")
    done = run_ftml("export", "onnx", name, str(version), "-c", "config.json", cwd=market)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["parity"]["max_abs_diff"] <= 1e-6
    model = ProductionModel.load(registry, name, runtime="onnx")
    assert type(model.bundle.model).__name__ == "OnnxModel"
    with pytest.raises(RegistryError, match="refusing export file name"):  # never over a registered file
        registry.add_export(name, version, {"model.txt": b"not a model"}, {})
    # a changed model.onnx fails its sha256: refused like any other file
    onnx_file = registry.version_dir(registry.version(name, version)) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="sha256"):
        ProductionModel.load(registry, name, runtime="onnx")

    refused, _ = registered(market, "random_forest")
    done = run_ftml("export", "onnx", refused, "1", "-c", "config.json", cwd=market)
    assert done.returncode == 2 and "random_forest models cannot be exported to ONNX" in done.stderr
    assert set(REFUSED) == {"hist_gb", "random_forest"}
