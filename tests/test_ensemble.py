"""Ensembles (ml.ensemble): chosen only when they beat the best single model by two standard
errors on purged out-of-fold predictions; saved, registered, verified, reloaded and exported
member by member like a single model."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml.bundle import BundleError, load_bundle
from ml.cli import freqtrade_settings
from ml.config import load
from ml.ensemble import COMBINED, ENSEMBLE_FILE, EnsembleModel, choose
from ml.models import FAMILIES
from ml.onnx_export import export_onnx, feature_rows
from ml.predictor import ProductionModel
from ml.registry import IntegrityError, open_registry
from ml.train import train
from tests.conftest import REPO, run_ftml, strategy_project, train_request
from tests.test_training import RELOAD, PickleBomb, pairs

pytestmark = pytest.mark.slow
ENSEMBLE = {"families": ["lightgbm", "logistic"], "trials": 6, "ensemble_members": 2}
# Two planted edges of different shapes: a saturating mean reversion (tanh of the distance
# from the EMA, which trees follow) and an intraday drift linear in cos(hour) (which a
# logistic regression on the hour features fits exactly): each family misses part of what
# the other sees.
PLANTED = {"strength": 0.6, "hour_drift": 0.6}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    strategy_project(root, pairs(6), 20000, "planted", 0, ml={"training": ENSEMBLE}, **PLANTED)
    return root, train(load(root / "config.json"), train_request(root))


def test_planted_market_chooses_an_ensemble_that_beats_its_best_member_out_of_sample(planted):
    _, summary = planted
    ens = summary["ensemble"]
    assert summary["family"] == "ensemble" and ens["chosen"] in COMBINED, ens
    assert ens["members"][0]["oof_log_loss"] <= ens["members"][1]["oof_log_loss"]  # the best member first
    cross = ens["cross_fit_log_loss"]
    assert cross[ens["chosen"]] < cross["single"] < cross["constant"]
    # Out of sample: the test block, which neither the members, the combiner nor the
    # calibrator saw. The best member alone is calibrated on the same block the same way.
    assert ens["test_log_loss"] < ens["best_member_test_log_loss"], ens
    assert summary["verdict"] == "edge"


def test_ensemble_bundle_reloads_bit_identically_and_never_opens_pickles(planted, tmp_path):
    root, summary = planted
    folder = Path(summary["bundle"])
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    # fitted on float32-rounded inputs, and so told to predict on them (the ONNX copy's values)
    assert json.loads((folder / "bundle.json").read_text())["inputs"] == "float32"
    assert [m["family"] for m in spec["members"]] == [m["family"] for m in summary["ensemble"]["members"]]
    subs = [f"members/{i}-{m['family']}" for i, m in enumerate(spec["members"])]
    assert {f for f in summary["files"] if f.startswith("members/")} == {
        f"{sub}/{FAMILIES[m['family']].filename}" for sub, m in zip(subs, spec["members"], strict=True)}
    marker = tmp_path / "pickle_was_opened"
    for sub in (".", *subs):
        (folder / sub / "model.pkl").write_bytes(pickle.dumps(PickleBomb(marker)))
    bundle = load_bundle(folder)
    assert isinstance(bundle.model, EnsembleModel)
    X = np.random.default_rng(1).normal(0, 0.05, size=(500, len(bundle.feature_names)))
    np.save(tmp_path / "X.npy", X)
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder), str(tmp_path / "X.npy"), str(tmp_path / "p.npy")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(bundle.predict_proba(X), np.load(tmp_path / "p.npy"))
    assert not marker.exists()


def test_registry_verifies_every_member_and_serves_it_from_onnx(planted):
    root, summary = planted
    cfg, ft = load(root / "config.json"), freqtrade_settings(root / "config.json")
    registry = open_registry(cfg.registry.path)
    entry = registry.register(summary["bundle"], "ens")
    assert entry["family"] == "ensemble"
    assert [m["family"] for m in entry["ensemble"]["members"]] == [m["family"] for m in summary["ensemble"]["members"]]
    member_files = [f for f in entry["files"] if f.startswith("members/")]
    assert len(member_files) == 2 and registry.verify_version(entry) == []
    registry.promote("ens", entry["id"], force=True, reason="test")
    served = ProductionModel.load(registry, "ens")
    assert isinstance(served.bundle.model, EnsembleModel)
    listed = run_ftml("registry", "list", "-c", "config.json", cwd=root)
    assert listed.returncode == 0 and summary["ensemble"]["chosen"] + ":" in listed.stdout, listed.stdout

    # ONNX: one file per member, the combiner stays JSON; parity on the combined probability.
    with pytest.raises(BundleError, match="no members/0-.*model.onnx"):
        ProductionModel.load(registry, "ens", runtime="onnx")  # not exported yet: fail closed, say which file
    result = export_onnx(cfg, ft, "ens", entry["id"])
    assert sorted(result["files"]) == sorted(f.rsplit("/", 1)[0] + "/model.onnx" for f in member_files)
    assert result["parity"]["max_abs_diff"] <= 1e-6 and result["parity"]["rows"] > 5000
    onnx = ProductionModel.load(registry, "ens", runtime="onnx")
    assert [type(m).__name__ for m in onnx.bundle.model.members] == ["OnnxModel", "OnnxModel"]
    X = feature_rows(cfg, ft, served.bundle.manifest, limit=2000)
    assert np.max(np.abs(onnx.bundle.predict_proba(X) - served.bundle.predict_proba(X))) <= 1e-6

    # Hot reload: another version promoted under the running model is noticed and loaded.
    newer = registry.register(summary["bundle"], "ens")
    registry.promote("ens", newer["id"], force=True, reason="test")
    assert served.changed() and served.production_moved()
    reloaded = ProductionModel.load(registry, "ens")
    assert reloaded.version == newer["id"] and isinstance(reloaded.bundle.model, EnsembleModel)

    # A member file changed on disk: the whole version is refused (sha256), never half-served.
    member = registry.version_dir(registry.version("ens", newer["id"])) / member_files[1]
    member.write_bytes(member.read_bytes() + b" ")
    with pytest.raises(IntegrityError, match="sha256"):
        ProductionModel.load(registry, "ens")


def test_malformed_ensemble_json_is_refused(planted, tmp_path):
    _, summary = planted
    folder = tmp_path / "bundle"
    shutil.copytree(summary["bundle"], folder)
    good = json.loads((folder / ENSEMBLE_FILE).read_text())
    bad = [
        {**good, "combiner": {**good["combiner"], "a": good["combiner"]["a"] + [1.0]}},  # a weight too many
        {**good, "members": [{**good["members"][0], "family": "os.system"}, good["members"][1]]},
        {**good, "combiner": {**good["combiner"], "b": [float("nan")] * len(good["combiner"]["b"])}},
        {**good, "members": good["members"][:1]},
    ]
    for spec in bad:
        (folder / ENSEMBLE_FILE).write_text(json.dumps(spec))
        with pytest.raises(BundleError, match=ENSEMBLE_FILE):
            load_bundle(folder)


def test_choice_rule_needs_two_standard_errors():
    rng = np.random.default_rng(0)
    n = 4000
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-signal))).astype(int)
    copy = 1 / (1 + np.exp(-signal + rng.normal(0, 0.05, n)))
    # Two near-copies of one model: averaging them gains nothing real.
    chosen, _ = choose(np.column_stack([copy, np.clip(copy + rng.normal(0, 0.001, n), 0.01, 0.99)]), y)
    assert chosen == "single"
    # Two models that each see half of the signal: the combination is far better.
    half_a, half_b = rng.normal(size=n), rng.normal(size=n)
    y2 = (rng.random(n) < 1 / (1 + np.exp(-(half_a + half_b)))).astype(int)
    P = np.column_stack([1 / (1 + np.exp(-half_a)), 1 / (1 + np.exp(-half_b))])
    chosen, info = choose(P, y2)
    assert chosen in COMBINED and info["cross_fit_log_loss"][chosen] < info["cross_fit_log_loss"]["single"]


@pytest.mark.parametrize("seed", range(5))
def test_null_market_never_chooses_an_ensemble_over_a_constant(tmp_path, seed):
    strategy_project(tmp_path, pairs(4), 6000, "null", seed, ml={"training": ENSEMBLE})
    summary = train(load(tmp_path / "config.json"), train_request(tmp_path))
    ens = summary["ensemble"]
    assert ens["chosen"] not in COMBINED and summary["family"] != "ensemble", ens
    assert summary["verdict"] == "no edge"
