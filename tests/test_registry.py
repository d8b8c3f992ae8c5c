"""The JSON-file registry: concurrency, crash safety, integrity, lifecycle, predictor."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.config import FeatureSettings, GateSettings, load
from ml.features import FeatureEngineer
from ml.predictor import FeatureMismatch, ProductionModel
from ml.registry import IntegrityError, Registry, RegistryError, open_registry, sha256_file
from ml.train import train
from tests.conftest import REPO, run_ftml, strategy_project, train_request, write_config
from tests.test_training import PickleBomb

OPEN_GATES = GateSettings(min_auc=0.0, max_ece=1.0, min_brier_skill=-1.0, min_trades=0, min_ev_return=-1.0,
                          max_citl_se=1e9, max_abs_z=1e9, ece_within_noise_band=False)


def small_bundle(root: Path, family: str) -> Path:
    """A real (small) training bundle of one model family: 2 pairs x 3000 candles, 1 trial."""
    strategy_project(root, ["A/BTC", "B/BTC"], 3000, "planted", 1, ml={"training": {"families": [family], "trials": 1}})
    summary = train(load(root / "config.json"), train_request(root))
    return Path(summary["bundle"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """One real (small) training bundle, registered many times below."""
    return small_bundle(tmp_path_factory.mktemp("bundle"), "logistic")


@pytest.fixture
def store(tmp_path) -> Registry:
    return open_registry(tmp_path / "registry")


def test_register_copies_files_with_hashes_and_logs_who(store, bundle):
    entry = store.register(bundle, "m", notes="first")
    assert entry["id"] == 1 and entry["status"] == "staged"
    folder = store.root / entry["path"]
    assert sorted(entry["files"]) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert not store.verify_version(entry)
    (event,) = store.history("m")
    assert event["action"] == "register" and event["pid"] == os.getpid() and event["user"] and event["host"]
    assert store.register(bundle, "m")["id"] == 2


def test_promote_needs_validation_or_force_with_reason(store, bundle):
    store.register(bundle, "m")
    with pytest.raises(RegistryError, match="has not been validated"):
        store.promote("m", 1)
    with pytest.raises(RegistryError, match="needs --reason"):
        store.promote("m", 1, force=True)
    strict = GateSettings(min_auc=0.99)
    result = store.validate("m", 1, strict)
    assert not result["passed"] and store.version("m", 1)["status"] == "failed"
    with pytest.raises(RegistryError, match="failed its gates"):
        store.promote("m", 1)
    store.promote("m", 1, force=True, reason="manual override for a test")
    assert store.production("m")["id"] == 1
    assert store.history("m")[-1]["reason"] == "manual override for a test"


def test_promote_then_rollback_restores_the_previous_production(store, bundle):
    for _ in range(2):
        entry = store.register(bundle, "m")
        store.validate("m", entry["id"], OPEN_GATES)
    store.promote("m", 1)
    before = store.production("m")
    store.promote("m", 2, reason="better")
    assert store.version("m", 1)["status"] == "archived" and store.production("m")["id"] == 2
    store.rollback("m", reason="v2 misbehaves")
    after = store.production("m")
    assert after == before | {"status": "production"} and after["id"] == 1
    assert store.version("m", 2)["status"] == "archived"
    actions = [(e["action"], e["version"]) for e in store.history("m")]
    assert actions[-2:] == [("promote", 2), ("rollback", 1)]
    with pytest.raises(RegistryError, match="no previous production"):
        store.rollback("m")


def test_archive_and_delete_never_touch_production(store, bundle):
    for _ in range(2):
        store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    with pytest.raises(RegistryError, match="production"):
        store.delete("m", 1)
    with pytest.raises(RegistryError, match="production"):
        store.archive("m", 1)
    folder = store.root / store.version("m", 2)["path"]
    store.delete("m", 2, reason="junk")
    assert not folder.exists() and "2" not in store.read()["models"]["m"]["versions"]
    assert store.register(bundle, "m")["id"] == 3  # ids are never reused


OPS_PER_PROCESS = 15  # each promote of a new version loads it in a child process (ml.smoke): ~1 s
WORKER = """
import json, random, sys
from ml.config import GateSettings
from ml.registry import open_registry, RegistryError
store, bundle, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
reg = open_registry(store)
rng = random.Random(seed)
done, refused = [], 0
for _ in range(int(sys.argv[5])):
    op = rng.choice(["register", "register", "promote", "promote", "rollback"])
    try:
        if op == "register":
            done.append(["register", reg.register(bundle, "m")["id"]])
        elif op == "promote":
            versions = [int(v) for v in reg.read()["models"].get("m", {}).get("versions", {})]
            if not versions:
                refused += 1
                continue
            vid = rng.choice(versions)
            done.append(["promote", reg.promote("m", vid, force=True, reason="stress")["id"]])
        else:
            done.append(["rollback", reg.rollback("m")["id"]])
    except RegistryError:
        refused += 1
json.dump({"done": done, "refused": refused}, open(out, "w"))
"""


def test_eight_processes_of_mixed_operations(tmp_path, bundle):
    store = tmp_path / "registry"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store), str(bundle), str(i), str(tmp_path / f"{i}.json"),
                               str(OPS_PER_PROCESS)],
                              cwd=REPO) for i in range(8)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(8)]
    done = [op for r in results for op in r["done"]]
    assert len(done) + sum(r["refused"] for r in results) == 8 * OPS_PER_PROCESS

    doc = json.loads((store / "registry.json").read_text())  # valid JSON
    model = doc["models"]["m"]
    registered = sorted(v for op, v in done if op == "register")
    assert registered == list(range(1, len(registered) + 1))  # every id handed out exactly once
    assert sorted(int(v) for v in model["versions"]) == registered  # no version lost
    production = [v for v in model["versions"].values() if v["status"] == "production"]
    assert len(production) == 1 and production[0]["id"] == model["production"]
    events = doc["events"]
    assert len(events) == len(done)  # every successful operation, and nothing else
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for action in ("register", "promote", "rollback"):
        assert sum(e["action"] == action for e in events) == sum(op == action for op, _ in done)
    assert not [v for v in model["versions"].values() if open_registry(store).verify_version(v)]


WRITER = """
import sys
from ml.registry import open_registry
reg = open_registry(sys.argv[1])
print("ready", flush=True)
while True:
    entry = reg.register(sys.argv[2], "m")
    reg.promote("m", entry["id"], force=True, reason="crash test")
    print("committed", len(reg.read()["models"]["m"]["versions"]), flush=True)
"""


def test_sigkill_at_random_moments_never_corrupts(tmp_path, bundle):
    store = tmp_path / "registry"
    rng = random.Random(7)
    # One promote first, so the bundle's child-process load check (ml.smoke, ~1-2 s) has
    # passed and is remembered: the writers below then commit in milliseconds.
    warm = open_registry(store)
    warm.promote("m", warm.register(bundle, "m")["id"], force=True, reason="warm the smoke check")
    committed, printed = 1, 0
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(bundle)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))  # wide enough to commit on a loaded machine
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("committed")]
        if lines:
            committed = int(lines[-1].split()[1])
            printed += len(lines)
        reg = open_registry(store)
        doc = reg.read()  # always loads
        versions = doc["models"].get("m", {}).get("versions", {})
        # The last state the writer saw committed is there, plus at most the one register
        # that was in flight when it died.
        assert committed <= len(versions) <= committed + 1
        committed = len(versions)  # what is on disk now is committed: the next baseline
        for entry in versions.values():
            assert not reg.verify_version(entry), entry["id"]
        if versions:
            assert sum(v["status"] == "production" for v in versions.values()) <= 1
    assert printed > 5  # the loop really wrote, not just started


def test_tampered_file_is_refused_by_loader_and_verify(tmp_path, bundle):
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    entry = reg.register(bundle, "trend_pullback")
    reg.promote("trend_pullback", 1, force=True, reason="test")
    model_file = reg.root / entry["path"] / "model.skops"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.skops: sha256 mismatch"):
        ProductionModel.load(reg, "trend_pullback")
    done = run_ftml("registry", "verify", "-c", "config.json", cwd=tmp_path)
    assert done.returncode == 1 and "model.skops" in done.stdout and "sha256 mismatch" in done.stdout


@pytest.mark.parametrize("hostile", ["../..", "/etc", "m/../../outside", "symlink"])
def test_entries_pointing_outside_the_store_are_refused(store, bundle, tmp_path, hostile):
    entry = store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    doc = json.loads(store.index.read_text())
    if hostile == "symlink":
        outside = tmp_path / "outside"
        outside.mkdir()
        (store.root / "m" / "evil").symlink_to(outside, target_is_directory=True)
        doc["models"]["m"]["versions"]["1"]["path"] = "m/evil"
    else:
        doc["models"]["m"]["versions"]["1"]["path"] = hostile
    store.index.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="Refusing"):
        ProductionModel.load(store, "m")
    assert store.verify_version(store.version("m", 1))
    assert entry  # the original entry was fine


def test_pickles_planted_in_a_version_folder_are_never_opened(store, bundle, tmp_path):
    entry = store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    marker = tmp_path / "opened"
    for name in ("model.pkl", "calibrator.pkl", "model.joblib"):
        (store.root / entry["path"] / name).write_bytes(pickle.dumps(PickleBomb(marker)))
    model = ProductionModel.load(store, "m")
    X = np.random.default_rng(0).normal(0, 0.02, (50, len(model.feature_names)))
    import pandas as pd

    assert np.isfinite(model.predict_proba(pd.DataFrame(X, columns=model.feature_names))).all()
    assert not marker.exists()


def test_feature_mismatch_says_what_differs(store, bundle):
    store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    assert ProductionModel.load(store, "m", FeatureEngineer(timeframe="1h")).version == 1
    other = FeatureEngineer(FeatureSettings(periods=[6, 14, 30]), timeframe="1h")
    with pytest.raises(FeatureMismatch, match=r"features.periods \[6, 14, 30, 60\] vs \[6, 14, 30\]") as err:
        ProductionModel.load(store, "m", other)
    assert "adds" in str(err.value) or "lacks" in str(err.value)
    with pytest.raises(FeatureMismatch, match="timeframe 1h vs 5m"):
        ProductionModel.load(store, "m", FeatureEngineer(timeframe="5m"))


def test_predictor_exposes_its_label_and_notices_a_new_production(store, bundle):
    for _ in range(2):
        store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    model = ProductionModel.load(store, "m")
    assert model.label == {"min_profit": 0.0} and model.entry["strategy"] == "EveryFewHours"
    assert model.train_end < __import__("pandas").Timestamp(model.entry["ranges"]["test"][0])
    assert not model.changed()
    store.promote("m", 2, force=True, reason="newer")
    assert model.changed() and model.production_moved()


def test_schema_is_checked_and_migrated(store, bundle, monkeypatch):
    store.register(bundle, "m")
    doc = json.loads(store.index.read_text())
    store.index.write_text(json.dumps({**doc, "schema_version": 99}))
    with pytest.raises(RegistryError, match="newer ftml"):
        store.read()
    old = {k: v for k, v in doc.items() if k != "schema_version"} | {"schema_version": 0, "versions_by_model": doc["models"]}
    del old["models"]
    store.index.write_text(json.dumps(old))
    from ml import registry

    def from_0(d):
        return {"schema_version": 1, "models": d.pop("versions_by_model"), "events": d["events"]}

    monkeypatch.setitem(registry.MIGRATIONS, 0, from_0)
    assert store.read()["models"]["m"]["versions"]["1"]["id"] == 1


def test_registry_cli_round_trip(tmp_path, bundle):
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    for _ in range(2):
        reg.register(bundle, "trend_pullback")

    def ftml(*args):
        return run_ftml("registry", *args, "-c", "config.json", cwd=tmp_path)

    listed = json.loads(ftml("list", "--json").stdout)
    assert [(r["version"], r["status"]) for r in listed] == [(1, "staged"), (2, "staged")]
    refused = ftml("promote", "trend_pullback", "1")
    assert refused.returncode == 2 and "validate" in refused.stderr
    validated = ftml("validate", "trend_pullback", "1", "--json")
    assert validated.returncode in (0, 1)
    gates = json.loads(validated.stdout)
    assert {c["name"] for c in gates["checks"]} >= {"min_auc", "max_ece", "min_brier_skill", "min_trades", "min_ev_return"}
    assert ftml("promote", "trend_pullback", "2", "--force").returncode == 2  # no reason
    assert ftml("promote", "trend_pullback", "2", "--force", "--reason", "test").returncode == 0
    shown = json.loads(ftml("show", "trend_pullback", "--json").stdout)
    assert shown["id"] == 2 and shown["status"] == "production"
    assert ftml("delete", "trend_pullback", "2").returncode == 2
    diff = json.loads(ftml("diff", "trend_pullback", "1", "2", "--json").stdout)
    assert diff["fields"]["status"] == ["failed" if not gates["passed"] else "staged", "production"]
    history = json.loads(ftml("history", "trend_pullback", "--json").stdout)
    assert [e["action"] for e in history] == ["register", "register", "validate", "promote"]
    assert ftml("verify").returncode == 0
    human = ftml("list")
    assert human.returncode == 0 and "production" in human.stdout


def test_calibration_revisions_are_hashed_guarded_schema_checked_and_rolled_back(store, bundle):
    store.register(bundle, "m")
    store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="test")
    base = (bundle / "calibrator.json").read_text()
    revised = json.dumps({"method": "revised", "a": 1.0, "b": 0.3, "base": json.loads(base)})
    with pytest.raises(RegistryError, match="only the production version"):
        store.add_calibration("m", 2, revised, {"fit_end": "2030-01-01T00:00:00+00:00"})
    with pytest.raises(RegistryError, match="fit_end"):
        store.add_calibration("m", 1, revised, {})
    revision = store.add_calibration("m", 1, revised, {"fit_end": "2030-01-01T00:00:00+00:00"}, reason="drift")
    entry = store.version("m", 1)
    assert revision["revision"] == 1 and revision["previous"] is None and entry["calibration_revision"] == 1
    assert entry["files"]["calibrator.r1.json"] == sha256_file(store.root / "m" / "v1" / "calibrator.r1.json")
    assert store.verify_version(entry) == [] and store.history("m")[-1]["action"] == "recalibrate"
    model = ProductionModel.load(store, "m")
    assert model.revision == 1 and model.bundle.calibrator.method == "revised"
    assert model.train_end == pd.Timestamp("2030-01-01", tz="UTC")  # the in-sample guard moved
    # A hand-edited pointer to a revision that does not exist is one clear error.
    doc = json.loads(store.index.read_text())
    doc["models"]["m"]["versions"]["1"]["calibration_revision"] = 5
    good = store.index.read_text()
    store.index.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="not among its calibration_revisions"):
        store.read()
    store.index.write_text(good)
    assert store.rollback_calibration("m", "back")["calibration_revision"] is None
    assert ProductionModel.load(store, "m").train_end == pd.Timestamp(entry["train_end"])
    with pytest.raises(RegistryError, match="no revision to roll back"):
        store.rollback_calibration("m")
