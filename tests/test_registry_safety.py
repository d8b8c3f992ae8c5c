"""Registry safety: hostile names, bundles and documents; tampering; native crashes; NaN.

Each test reproduces a defect found in review (issues "Fix first" and "Security and
robustness") and fails on the code before the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml.config import ConfigError, from_dict
from ml.predictor import ProductionModel
from ml.registry import IntegrityError, RegistryError, open_registry
from tests.conftest import REPO, run_ftml, write_config
from tests.test_registry import bundle, small_bundle  # noqa: F401  (the module fixture: one real bundle)


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store").mkdir()
    return open_registry(tmp_path / "store" / "registry")


def strict_json(text: str):
    """Parse as other tools do: bare NaN / Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- names and paths
@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "a\\b", "x" * 101])
def test_unsafe_model_names_are_refused_before_any_path_is_built(store, bundle, name):  # noqa: F811
    with pytest.raises(ConfigError, match="ml.model.name"):
        from_dict({"model": {"name": name}})
    with pytest.raises(RegistryError, match="Invalid model name"):
        store.register(bundle, name)
    assert [p.name for p in store.root.parent.iterdir()] in ([], ["registry"])  # nothing beside the store
    assert not store.root.exists() or not list(store.root.rglob("v1"))


def test_an_empty_model_name_is_refused_by_config():
    with pytest.raises(ConfigError, match="ml.model.name"):
        from_dict({"model": {"name": ""}})


def test_train_refuses_a_dotdot_model_name_and_deletes_nothing(tmp_path):
    write_config(tmp_path / "config.json", ml={"model": {"name": ".."}})
    sibling = tmp_path / "keep_me"
    sibling.mkdir()
    done = run_ftml("train", "-c", "config.json", cwd=tmp_path)
    assert done.returncode == 2 and "ml.model.name" in done.stderr and "Traceback" not in done.stderr
    assert sibling.is_dir()


@pytest.mark.parametrize("listed", ["../outside.py", "/etc/hostname", "sub/../../outside.py", "link.py"])
def test_bundle_listing_files_outside_itself_is_refused(store, bundle, tmp_path, listed):  # noqa: F811
    crafted = tmp_path / "crafted"
    shutil.copytree(bundle, crafted)
    (tmp_path / "outside.py").write_text("print('payload')\n")
    (crafted / "link.py").symlink_to(tmp_path / "outside.py")
    manifest = json.loads((crafted / "bundle.json").read_text())
    manifest["model_files"] = [*manifest["model_files"], listed]
    (crafted / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="bundle"):
        store.register(crafted, "m")
    assert not store.index.exists() or "m" not in store.read()["models"]
    assert not list(store.root.rglob("outside.py"))


# ---------------------------------------------------------------- hostile registry.json
def hostile_documents(doc: dict) -> dict[str, str]:
    versions = doc["models"]["m"]["versions"]
    return {
        "production_string": {**doc, "models": {"m": {**doc["models"]["m"], "production": "abc"}}},
        "versions_list": {**doc, "models": {"m": {**doc["models"]["m"], "versions": list(versions.values())}}},
        "train_end_word": {**doc, "models": {"m": {**doc["models"]["m"], "versions": {
            "1": {**versions["1"], "train_end": "yesterday"}}}}},
        "train_end_naive": {**doc, "models": {"m": {**doc["models"]["m"], "versions": {
            "1": {**versions["1"], "train_end": "2024-01-01 00:00:00"}}}}},
        "label_list": {**doc, "models": {"m": {**doc["models"]["m"], "versions": {
            "1": {**versions["1"], "label": [0.03, 0.03]}}}}},
        "production_missing": {**doc, "models": {"m": {**doc["models"]["m"], "production": 7}}},
    }


@pytest.mark.parametrize("kind", ["production_string", "versions_list", "train_end_word", "train_end_naive",
                                  "label_list", "production_missing", "deep_nesting"])
def test_a_hostile_registry_json_is_one_clear_error_everywhere(tmp_path, bundle, kind):  # noqa: F811
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    reg.register(bundle, "m")
    reg.promote("m", 1, force=True, reason="test")
    doc = json.loads(reg.index.read_text())
    text = ("[" * 100_000 + "]" * 100_000) if kind == "deep_nesting" else json.dumps(hostile_documents(doc)[kind])
    reg.index.write_text(text)
    with pytest.raises(RegistryError, match="registry"):
        reg.read()
    with pytest.raises(RegistryError):
        ProductionModel.load(reg, "m")
    for command in (["registry", "list"], ["registry", "verify"], ["registry", "show", "m", "1"]):
        done = run_ftml(*command, "-c", "config.json", cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr[-500:])
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    with pytest.raises(RegistryError):  # and nothing is written over it
        reg.register(bundle, "m")
    assert reg.index.read_text() == text


def test_registry_and_json_output_never_hold_bare_nan(tmp_path, bundle):  # noqa: F811
    crafted = tmp_path / "nan_bundle"
    shutil.copytree(bundle, crafted)
    manifest = json.loads((crafted / "bundle.json").read_text())
    manifest["metrics"]["auc"] = float("nan")
    (crafted / "bundle.json").write_text(json.dumps(manifest))  # Python writes a bare NaN here
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    reg.register(crafted, "m")
    doc = strict_json(reg.index.read_text())
    assert doc["models"]["m"]["versions"]["1"]["metrics"]["auc"] is None
    for command in (["registry", "list", "--json"], ["registry", "show", "m", "1", "--json"]):
        done = run_ftml(*command, "-c", "config.json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        strict_json(done.stdout)


# ---------------------------------------------------------------- tampering and integrity
def test_promote_verifies_files_and_verify_fails_an_empty_hash_list(tmp_path, bundle):  # noqa: F811
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    entry = reg.register(bundle, "m")
    calibrator = reg.root / entry["path"] / "calibrator.json"
    calibrator.write_text(json.dumps({"method": "constant", "p": 0.99}))  # tampered after registration
    done = run_ftml("registry", "promote", "m", "1", "--force", "--reason", "t", "-c", "config.json", cwd=tmp_path)
    assert done.returncode == 2 and "sha256 mismatch" in done.stderr
    assert reg.read()["models"]["m"]["production"] is None
    reg.register(bundle, "m")
    doc = json.loads(reg.index.read_text())
    doc["models"]["m"]["versions"]["2"]["files"] = {}
    reg.index.write_text(json.dumps(doc))
    assert any("no file hashes" in p for p in reg.verify_version(reg.version("m", 2)))
    with pytest.raises(IntegrityError, match="no file hashes"):
        reg.promote("m", 2, force=True, reason="t")


def test_delete_never_follows_a_path_into_another_version(store, bundle):  # noqa: F811
    store.register(bundle, "m")
    store.register(bundle, "m")
    doc = json.loads(store.index.read_text())
    doc["models"]["m"]["versions"]["2"]["path"] = "m/v1"  # edited to point at v1's folder
    store.index.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="Refusing to delete"):
        store.delete("m", 2)
    assert not store.verify_version(store.version("m", 1))


@pytest.mark.parametrize("train_end", [None, "", "2024-06-01 00:00:00"])
def test_a_model_without_an_aware_train_end_is_refused(store, bundle, train_end):  # noqa: F811
    """A missing train_end became NaT, and `date <= NaT` is False everywhere: the in-sample
    guard blocked nothing (0 of 4,000 training candles)."""
    store.register(bundle, "m")
    store.promote("m", 1, force=True, reason="t")
    doc = json.loads(store.index.read_text())
    entry = doc["models"]["m"]["versions"]["1"]
    if train_end is None:
        del entry["train_end"]
    else:
        entry["train_end"] = train_end
    store.index.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="train_end"):
        ProductionModel.load(store, "m")


# ---------------------------------------------------------------- native crashes
@pytest.fixture(scope="module")
def lightgbm_bundle(tmp_path_factory) -> Path:
    return small_bundle(tmp_path_factory.mktemp("lgb"), "lightgbm")


CRASHES = """
import lightgbm, numpy as np, sys
booster = lightgbm.Booster(model_file=sys.argv[1])
booster.predict(np.zeros((2, booster.num_feature())))
"""


@pytest.mark.slow
def test_a_model_file_that_crashes_the_library_is_refused_not_fatal(tmp_path, lightgbm_bundle):
    malformed = tmp_path / "malformed"
    shutil.copytree(lightgbm_bundle, malformed)
    text = (malformed / "model.txt").read_text()
    (malformed / "model.txt").write_text(re.sub(r"num_leaves=\d+", "num_leaves=100000", text, count=1))
    # The file really kills a process that loads it (SIGABRT inside LightGBM):
    died = subprocess.run([sys.executable, "-c", CRASHES, str(malformed / "model.txt")], capture_output=True, cwd=REPO,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert died.returncode < 0
    reg = open_registry(tmp_path / "registry")
    reg.register(malformed, "m")  # hashes match: only loading it reveals the problem
    with pytest.raises(IntegrityError, match="crashed a test process with SIG"):
        reg.promote("m", 1, force=True, reason="t")
    assert reg.read()["models"]["m"]["production"] is None
    # A version made production behind the registry's back is refused at load, and this
    # process (standing in for the bot) is still alive to say so.
    doc = json.loads(reg.index.read_text())
    doc["models"]["m"]["production"] = 1
    doc["models"]["m"]["versions"]["1"]["status"] = "production"
    reg.index.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="crashed a test process"):
        ProductionModel.load(reg, "m")


def test_leftovers_of_killed_writers_are_reported_then_cleaned(tmp_path, bundle):  # noqa: F811
    write_config(tmp_path / "config.json")
    reg = open_registry(tmp_path / "registry")
    reg.register(bundle, "m")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs: the 'killed writer'
    (reg.root / f".registry.json.{gone.pid}.tmp").write_text("{")
    (reg.root / "m" / f".v2.{gone.pid}.tmp").mkdir()
    shutil.copytree(reg.root / "m" / "v1", reg.root / "m" / "v7")  # copied, never committed
    live = subprocess.Popen(["sleep", "60"])
    (reg.root / f".registry.json.{live.pid}.tmp").write_text("{")  # a live writer's: not ours to touch
    done = run_ftml("registry", "verify", "-c", "config.json", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["leftovers"]) == sorted(
        [f".registry.json.{gone.pid}.tmp", f"m/.v2.{gone.pid}.tmp", "m/v7"])
    reg.register(bundle, "m")
    assert reg.leftovers() == [] and (reg.root / f".registry.json.{live.pid}.tmp").exists()
    live.kill()
    assert reg.history("m")[-1]["cleaned"]
    assert not reg.verify_version(reg.version("m", 1))
