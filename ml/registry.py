"""The JSON-file model registry: lifecycle, validation gates, integrity, an event log.

Store layout (``registry.path``, default ``registry/``):

    registry.json          schema_version, models -> versions, production pointers, events
    registry.json.lock     inter-process lock (filelock)
    <name>/v<id>/...       one folder per version: the bundle's files, verbatim

Every write takes the lock, re-reads the file, changes it, writes a temp file, fsyncs it
and ``os.replace``s it over registry.json (then fsyncs the folder), so a reader never sees
a half-written file and a crash at any point leaves the last committed state. Artifact
files are copied into the version folder *before* the entry that names them is committed.

Statuses: staged -> (validate) -> staged with passing gates | failed;
staged -> (promote) -> production -> (promote another / rollback) -> archived.
At most one production version per name. This module imports no numpy/pandas: a cron
job or a bot reading the registry stays light.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ml import registry_schema
from ml.errors import FtmlError
from ml.jsonsafe import json_safe
from ml.redact import redact_urls

SCHEMA_VERSION = 1
INDEX = "registry.json"
STATUSES = ("staged", "production", "archived", "failed")
LOCK_TIMEOUT_S = 60.0
# No model, calibrator or plot of ours comes near this; a larger file is refused at
# registration and at load (a hostile or broken file must not exhaust a bot's memory).
MAX_FILE_BYTES = 256 * 1024 * 1024


class RegistryError(FtmlError):
    """A registry operation that cannot be done; the message says why and what to do."""


class IntegrityError(RegistryError):
    """A file does not match its recorded sha256, or a path leaves the store."""


# A model name becomes a folder of the store: letters, digits, '_', '.', '-', not starting
# with '.', so '.', '..' and hidden names can never be built into a path.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def check_model_name(name: Any) -> str:
    """Return ``name`` if it is a safe model name, else raise before any path is built."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise RegistryError(f"Invalid model name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
                            "not starting with '.' (it becomes a folder of the registry store)")
    return name


class ProductionMoved(RegistryError):
    """Production changed between reading the champion and promoting a challenger."""


# Schema migrations: MIGRATIONS[n] turns a schema-n document into schema n+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


# What `ftml export` may add to a version folder: the model's ONNX copy, or an ensemble
# member's next to the member's native file.
EXPORT_FILE = re.compile(r"(members/[0-9]+-[a-z_]+/)?model\.onnx")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _origin() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"host": socket.gethostname(), "user": user, "pid": os.getpid(),
            "command": redact_urls(" ".join(sys.argv))[:300]}


def _empty() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "models": {}, "events": []}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def _owner_alive(path: Path) -> bool:
    """Whether the process that named a temp file ``.<stem>.<pid>.tmp`` still runs."""
    try:
        pid = int(path.name.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return False
    return pid == os.getpid() or pid_alive(pid)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def migrate(doc: dict[str, Any], source: str) -> dict[str, Any]:
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise RegistryError(f"{source}: no integer schema_version; not a registry file")
    if version > SCHEMA_VERSION:
        raise RegistryError(f"{source}: schema_version {version} was written by a newer ftml "
                            f"(this one reads up to {SCHEMA_VERSION}); upgrade ftml")
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise RegistryError(f"{source}: no migration from schema_version {version}")
        doc = MIGRATIONS[version](doc)
        version = doc["schema_version"]
    return doc


@dataclass
class Registry:
    """Operations on one store. Construct with :func:`open_registry`."""

    root: Path
    lock_timeout: float = LOCK_TIMEOUT_S

    # ------------------------------------------------------------------ reading
    @property
    def index(self) -> Path:
        return self.root / INDEX

    def read(self) -> dict[str, Any]:
        """The committed document (an empty registry if there is none yet)."""
        try:
            text = self.index.read_text()
        except FileNotFoundError:
            return _empty()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise RegistryError(f"{self.index} is not valid JSON ({err}); restore it from a backup") from None
        except RecursionError:
            raise RegistryError(f"{self.index} is nested too deeply to be a registry; restore it from a backup") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{self.index}: the top level must be an object; restore it from a backup")
        doc = migrate(doc, str(self.index))
        found = registry_schema.problems(doc)
        if found:
            raise RegistryError(f"{self.index} is not a valid registry ({'; '.join(found[:3])}); fix that entry or "
                                "restore a backup. Nothing was changed.")
        return doc

    def model(self, name: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        check_model_name(name)
        doc = doc or self.read()
        if name not in doc["models"]:
            known = ", ".join(sorted(doc["models"])) or "none yet"
            raise RegistryError(f"No model named '{name}' in {self.root} (known: {known}). "
                                f"Train one with `ftml train`.")
        return doc["models"][name]

    def version(self, name: str, version: int, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        entry = self.model(name, doc)["versions"].get(str(version))
        if entry is None:
            raise RegistryError(f"Model '{name}' has no version {version}; see `ftml registry list`.")
        return entry

    def production(self, name: str, doc: dict[str, Any] | None = None) -> dict[str, Any] | None:
        model = self.model(name, doc)
        pid = model.get("production")
        return model["versions"][str(pid)] if pid is not None else None

    def version_dir(self, entry: dict[str, Any]) -> Path:
        """The version's folder, refused unless it resolves inside the store."""
        return self.safe_path(entry["path"])

    def safe_path(self, relative: str) -> Path:
        """Resolve a stored relative path; refuse absolute paths, '..' and symlinks out."""
        if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\\" in relative:
            raise IntegrityError(f"Refusing artifact path {relative!r}: must be relative to {self.root}")
        if any(part in ("..", "") for part in relative.split("/")):
            raise IntegrityError(f"Refusing artifact path {relative!r}: '..' or empty parts")
        root = self.root.resolve()
        target = (root / relative)
        resolved = target.resolve()
        if not resolved.is_relative_to(root):
            raise IntegrityError(f"Refusing artifact path {relative!r}: resolves to {resolved}, outside {root}")
        # A symlink anywhere on the way could point elsewhere later: refuse them all.
        probe = root
        for part in relative.split("/"):
            probe = probe / part
            if probe.is_symlink():
                raise IntegrityError(f"Refusing artifact path {relative!r}: {probe} is a symlink")
        return resolved

    def verify_version(self, entry: dict[str, Any]) -> list[str]:
        """Problems with one version's files (empty when every sha256 matches)."""
        problems = []
        try:
            folder = self.version_dir(entry)
        except IntegrityError as err:
            return [str(err)]
        files = entry.get("files")
        if not isinstance(files, dict) or not files:
            return [f"{folder}: the registry lists no file hashes for this version, so nothing can be verified"]
        for rel, digest in sorted(files.items()):
            try:
                path = self.safe_path(f"{entry['path']}/{rel}")
            except IntegrityError as err:
                problems.append(str(err))
                continue
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{path}: over the {MAX_FILE_BYTES} byte ceiling")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: sha256 mismatch (the file was changed after registration)")
        if not folder.is_dir():
            problems.append(f"{folder}: version folder missing")
        return problems

    def leftovers(self, doc: dict[str, Any] | None = None) -> list[Path]:
        """What killed writers left behind: temp files and staging folders of dead
        processes, and version folders no entry references (a register killed between
        copying and committing)."""
        if not self.root.is_dir():
            return []
        doc = doc or self.read()
        found = [p for p in self.root.glob(f".{INDEX}.*.tmp") if not _owner_alive(p)]
        for name, model in sorted(doc["models"].items()):
            folder = self.root / name
            if not folder.is_dir() or folder.is_symlink():
                continue
            referenced = {v["path"] for v in model["versions"].values()}
            for child in sorted(folder.iterdir()):
                if re.fullmatch(r"\.v\d+\.\d+\.tmp", child.name):
                    if not _owner_alive(child):
                        found.append(child)
                elif re.fullmatch(r"v\d+", child.name) and child.is_dir() and f"{name}/{child.name}" not in referenced:
                    found.append(child)
        return found

    def clean_leftovers(self, doc: dict[str, Any]) -> list[str]:
        """Remove :meth:`leftovers` (called under the lock, so no live writer is mid-way)."""
        removed = []
        for path in self.leftovers(doc):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(self.root)))
        return removed

    # ------------------------------------------------------------------ writing
    def _transaction(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Lock, re-read, change, write atomically. ``change`` mutates the doc in place."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.index) + ".lock", timeout=self.lock_timeout):
                doc = self.read()
                result = change(doc)
                tmp = self.root / f".{INDEX}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(json_safe(doc), f, indent=1, sort_keys=True, allow_nan=False)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.index)
                _fsync_dir(self.root)
                return result
        except Timeout:
            raise RegistryError(f"Another process holds {self.index}.lock for over {self.lock_timeout:.0f} s; "
                                "try again when it finishes") from None

    @staticmethod
    def _event(doc: dict[str, Any], action: str, name: str, version: int | None, reason: str = "",
               **details: Any) -> None:
        doc["events"].append({"seq": len(doc["events"]) + 1, "time": _now(), "action": action,
                              "model": name, "version": version, "reason": reason, **_origin(), **details})

    def register(self, bundle_dir: str | Path, name: str | None = None, notes: str = "",
                 tags: list[str] | None = None, status: str = "staged", reason: str = "",
                 gates: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy a training bundle into the store as a new version (staged by default)."""
        bundle_dir = Path(bundle_dir)
        manifest = _read_manifest(bundle_dir)
        name = name or manifest.get("model_name")
        if not name:
            raise RegistryError(f"{bundle_dir}: no model name; pass one")
        check_model_name(name)
        if status not in ("staged", "failed"):
            raise RegistryError(f"A new version is staged or failed, not {status!r}")
        sources = _bundle_files(bundle_dir)

        def change(doc):
            cleaned = self.clean_leftovers(doc)
            model = doc["models"].setdefault(name, {"next_id": 1, "production": None,
                                                     "production_history": [], "versions": {}})
            vid = model["next_id"]
            model["next_id"] = vid + 1
            rel = f"{name}/v{vid}"
            target = self.root / rel
            if target.exists():  # an orphan of a crashed register: never referenced, safe to replace
                shutil.rmtree(target)
            staging = self.root / name / f".v{vid}.{os.getpid()}.tmp"
            if staging.exists():
                shutil.rmtree(staging)
            files = {}
            for rel_file, src in sources.items():
                dst = staging / rel_file
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                files[rel_file] = sha256_file(dst)
            os.replace(staging, target)
            _fsync_dir(target.parent)
            entry = {
                "id": vid, "name": name, "status": status, "created": _now(), "path": rel, "files": files,
                "family": manifest.get("family"), "feature_set_id": manifest.get("feature_set_id"),
                "feature_names": manifest.get("feature_names", []), "features": manifest.get("features"),
                "timeframe": manifest.get("timeframe"), "label": manifest.get("label"),
                "strategy": manifest.get("strategy"),
                "label_source": manifest.get("label_source", "barrier"), "sides": manifest.get("sides", ["long"]),
                "outcome_returns": manifest.get("outcome_returns"),
                "ev_margin": manifest.get("ev_margin"), "pairs": manifest.get("pairs", []),
                "ranges": manifest.get("ranges", {}), "train_end": manifest.get("train_end"),
                "metrics": manifest.get("metrics", {}), "backtest": None, "gates": gates,
                "tracking": manifest.get("tracking"), "tags": list(tags or []), "notes": notes,
                "exits": manifest.get("exits"), "synthetic_data": manifest.get("synthetic_data") or {},
                "ensemble": _ensemble_summary(manifest),
                "source": str(bundle_dir.resolve()),
            }
            model["versions"][str(vid)] = entry
            self._event(doc, "register", name, vid, reason or notes, status=status,
                        **({"cleaned": cleaned} if cleaned else {}))
            return entry

        return self._transaction(change)

    def validate(self, name: str, version: int, gates, backtest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the gates on a version's stored metrics; store the result. Fail -> status failed."""

        def change(doc):
            entry = self.version(name, version, doc)
            if entry["status"] == "archived":
                raise RegistryError(f"{name} v{version} is archived; validate a staged, failed or production version")
            if backtest is not None:
                entry["backtest"] = backtest
            result = run_gates(entry["metrics"], gates, entry.get("backtest"))
            entry["gates"] = result
            # A production version (force-promoted, say) is judged and the result recorded,
            # but its status stays: demoting it is the operator's call (rollback).
            if entry["status"] != "production":
                entry["status"] = "staged" if result["passed"] else "failed"
            failed = [c["name"] for c in result["checks"] if not c["passed"]]
            self._event(doc, "validate", name, version, "passed" if result["passed"] else f"failed: {', '.join(failed)}")
            return result

        return self._transaction(change)

    def promote(self, name: str, version: int, force: bool = False, reason: str = "",
                expected_production: int | None | str = "any") -> dict[str, Any]:
        """Make a validated version production; the previous one is archived.

        ``expected_production``: refuse (ProductionMoved) unless production is still that
        version when the lock is held. Retrain passes the champion it scored against, so an
        operator's rollback during a long run is never overridden.
        """
        if force and not reason:
            raise RegistryError("--force needs --reason: say why an unvalidated model goes live")
        self.smoke(name, version)

        def change(doc):
            model = self.model(name, doc)
            entry = self.version(name, version, doc)
            if entry["status"] == "production":
                raise RegistryError(f"{name} v{version} is already production")
            passed = bool(entry.get("gates") and entry["gates"].get("passed"))
            if not passed and not force:
                state = "has not been validated" if not entry.get("gates") else "failed its gates"
                raise RegistryError(f"{name} v{version} {state}; run `ftml registry validate {name} {version}`, "
                                    "or promote with --force --reason")
            problems = self.verify_version(entry)
            if problems:
                raise IntegrityError(f"Refusing to promote {name} v{version}: " + "; ".join(problems))
            previous = model.get("production")
            if expected_production != "any" and previous != expected_production:
                raise ProductionMoved(f"Not promoting {name} v{version}: production is v{previous} now, not "
                                      f"v{expected_production} as when this run started (a manual promote or "
                                      "rollback happened meanwhile); leaving it as the operator set it.")
            if previous is not None:
                model["versions"][str(previous)]["status"] = "archived"
                model["production_history"].append(previous)
            entry["status"] = "production"
            model["production"] = version
            self._event(doc, "promote", name, version, reason, previous=previous, forced=force and not passed)
            return entry

        return self._transaction(change)

    def rollback(self, name: str, reason: str = "") -> dict[str, Any]:
        """Restore the previous production version; the current one is archived."""
        model = self.model(name)
        target = next((v for v in reversed(model.get("production_history", [])) if str(v) in model["versions"]), None)
        if target is not None:
            self.smoke(name, target)

        def change(doc):
            model = self.model(name, doc)
            history = model.get("production_history", [])
            while history and str(history[-1]) not in model["versions"]:
                history.pop()  # deleted since: skip it
            if not history:
                raise RegistryError(f"{name} has no previous production version to roll back to")
            current, back = model.get("production"), history.pop()
            problems = self.verify_version(model["versions"][str(back)])
            if problems:
                raise IntegrityError(f"Refusing to roll {name} back to v{back}: " + "; ".join(problems))
            if current is not None:
                model["versions"][str(current)]["status"] = "archived"
            model["versions"][str(back)]["status"] = "production"
            model["production"] = back
            self._event(doc, "rollback", name, back, reason, previous=current)
            return model["versions"][str(back)]

        return self._transaction(change)

    def smoke(self, name: str, version: int) -> None:
        """Load and predict in a child process (ml.smoke): a model file that crashes the
        native library is refused here, before any bot loads it. Outside the lock: it
        takes a second or two; promote re-verifies the hashes inside the lock."""
        from ml.smoke import smoke_test

        entry = self.version(name, version)
        problems = self.verify_version(entry)
        if problems:
            raise IntegrityError(f"Refusing {name} v{version}: " + "; ".join(problems))
        why = smoke_test(self.version_dir(entry), entry["files"], self.root)
        if why:
            raise IntegrityError(f"Refusing {name} v{version}: {why}")

    def disable(self, name: str, reason: str) -> dict[str, Any]:
        """The kill switch: every gated strategy of ``name`` stops entering on its next candle
        (open trades keep their exits); production stays as it is, for ``enable``."""
        if not reason:
            raise RegistryError("disable needs --reason: say why the gate is closed (it is in the event log)")

        def change(doc):
            model = self.model(name, doc)
            model["disabled"] = {"time": _now(), "reason": reason, **_origin()}
            self._event(doc, "disable", name, model.get("production"), reason)
            return model

        return self._transaction(change)

    def enable(self, name: str, reason: str = "") -> dict[str, Any]:
        """Lift the kill switch: the production version trades again from the next candle."""

        def change(doc):
            model = self.model(name, doc)
            if not model.get("disabled"):
                raise RegistryError(f"{name} is not disabled")
            model["disabled"] = None
            self._event(doc, "enable", name, model.get("production"), reason)
            return model

        return self._transaction(change)

    def archive(self, name: str, version: int, reason: str = "", force: bool = False) -> dict[str, Any]:
        """Retire a version. The production version only with ``force`` and a reason: the
        model then has no production version, every gate of it closes on its next candle
        (open trades keep their exits), and ``rollback`` can restore it."""
        if force and not reason:
            raise RegistryError("archiving the production version needs --reason: every gate of it closes")

        def change(doc):
            model = self.model(name, doc)
            entry = self.version(name, version, doc)
            if entry["status"] == "production":
                if not force:
                    raise RegistryError(f"{name} v{version} is production: promote another version, roll back, or "
                                        "archive it with --force --reason (then no version is production and its "
                                        "gates close)")
                model["production"] = None
                model["production_history"].append(version)
            entry["status"] = "archived"
            self._event(doc, "archive", name, version, reason)
            return entry

        return self._transaction(change)

    def delete(self, name: str, version: int, reason: str = "") -> None:
        """Remove a non-production version and its files. Ids are never reused."""

        def change(doc):
            entry = self.version(name, version, doc)
            if entry["status"] == "production":
                raise RegistryError(f"{name} v{version} is production and cannot be deleted")
            folder = self.version_dir(entry)
            # Only ever remove this version's own folder: an entry whose path was edited to
            # point at another version (or the model folder) must not take that one with it.
            if folder != (self.root / name / f"v{version}").resolve():
                raise IntegrityError(f"Refusing to delete {name} v{version}: its path {entry['path']!r} is not "
                                     f"{name}/v{version}")
            del self.model(name, doc)["versions"][str(version)]
            self._event(doc, "delete", name, version, reason)
            return folder

        folder = self._transaction(change)
        # Files go after the commit: a crash in between leaves an unreferenced folder, not a
        # referenced version without files.
        shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ calibration revisions
    def add_calibration(self, name: str, version: int, calibrator_json: str, details: dict[str, Any],
                        reason: str = "") -> dict[str, Any]:
        """Record a refitted calibration layer as revision n of ``version`` and make it active.

        The model file is untouched: only ``calibrator.r<n>.json`` is added to the version
        folder (written before the entry that names it is committed, hashed like every other
        file). ``details`` must hold ``fit_end``, the newest candle whose outcome the fit or
        the decision to apply it used: the in-sample guard extends to it.
        """
        if not details.get("fit_end"):
            raise RegistryError("a calibration revision needs its fit_end (the in-sample guard extends to it)")

        def change(doc):
            entry = self.version(name, version, doc)
            if entry["status"] != "production":
                raise RegistryError(f"{name} v{version} is {entry['status']}: only the production version is "
                                    "recalibrated")
            revisions = entry.setdefault("calibration_revisions", [])
            number = len(revisions) + 1
            rel = f"calibrator.r{number}.json"
            target = self.safe_path(f"{entry['path']}/{rel}")
            tmp = target.with_name(f".{rel}.{os.getpid()}.tmp")
            tmp.write_text(calibrator_json)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
            revision = {"revision": number, "file": rel, "created": _now(),
                        "previous": entry.get("calibration_revision"), **details}
            revisions.append(revision)
            entry["files"][rel] = sha256_file(target)
            entry["calibration_revision"] = number
            self._event(doc, "recalibrate", name, version, reason, revision=number, fit_end=details["fit_end"])
            return revision

        return self._transaction(change)

    def add_export(self, name: str, version: int, files: dict[str, bytes], details: dict[str, Any]) -> None:
        """Add derived artifacts of the model (``ftml export onnx``: ``model.onnx``, or one per
        ensemble member) to the version folder, all in one transaction, hashed like every other
        file and described under ``exports``."""
        for filename in files:  # never overwrite a file the version was registered with
            if not EXPORT_FILE.fullmatch(filename):
                raise RegistryError(f"refusing export file name {filename!r} (known: model.onnx, "
                                    "members/<i>-<family>/model.onnx)")

        def change(doc):
            entry = self.version(name, version, doc)
            for filename, data in files.items():
                target = self.safe_path(f"{entry['path']}/{filename}")
                if not target.parent.is_dir():
                    raise RegistryError(f"{name} v{version} has no folder {Path(filename).parent}: not one of its members")
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                _fsync_dir(target.parent)
                entry["files"][filename] = sha256_file(target)
            entry.setdefault("exports", {})["onnx"] = {**details, "created": _now()}
            self._event(doc, "export", name, version, f"exported {', '.join(files)}")

        self._transaction(change)

    def rollback_calibration(self, name: str, reason: str = "") -> dict[str, Any]:
        """Make the production version use the calibrator that was active before the current
        revision (the training calibrator when it was the first)."""

        def change(doc):
            entry = self.production(name, doc)
            if entry is None:
                raise RegistryError(f"{name} has no production version")
            current = entry.get("calibration_revision")
            if not current:
                raise RegistryError(f"{name} v{entry['id']} uses its training calibrator: no revision to roll back")
            back = active_revision(entry)["previous"]
            entry["calibration_revision"] = back
            self._event(doc, "recalibration-rollback", name, entry["id"], reason, revision=back, previous=current)
            return entry

        return self._transaction(change)

    def set_backtest(self, name: str, version: int, backtest: dict[str, Any]) -> None:
        def change(doc):
            self.version(name, version, doc)["backtest"] = backtest
            self._event(doc, "backtest", name, version, "backtest figures recorded")

        self._transaction(change)

    def history(self, name: str | None = None) -> list[dict[str, Any]]:
        events = self.read()["events"]
        return [e for e in events if name is None or e["model"] == name]


def active_revision(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration revision a version uses now (None: the calibrator it was trained with)."""
    number = entry.get("calibration_revision")
    if not number:
        return None
    for revision in entry.get("calibration_revisions") or []:
        if revision.get("revision") == number:
            return revision
    raise RegistryError(f"{entry.get('name')} v{entry.get('id')}: calibration_revision {number} is not among its "
                        "calibration_revisions; fix registry.json or roll the calibration back")


def calibrator_file(entry: dict[str, Any]) -> str | None:
    """The active revision's calibrator file (None: the bundle's own calibrator.json)."""
    revision = active_revision(entry)
    return revision["file"] if revision else None


def guard_end(entry: dict[str, Any]) -> str | None:
    """The newest candle any part of the version in use was fitted on: ``train_end``, or the
    active revision's ``fit_end`` when that is later (ISO strings of aware UTC dates)."""
    revision = active_revision(entry)
    ends = [e for e in (entry.get("train_end"), revision and revision.get("fit_end")) if e]
    return max(ends, key=lambda e: datetime.fromisoformat(e)) if ends else None


def run_gates(metrics: dict[str, Any], gates, backtest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare stored test metrics with the configured thresholds."""

    def check(name, value, threshold, ok):
        return {"name": name, "value": value, "threshold": threshold, "passed": bool(ok)}

    def num(key):
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) else float("nan")

    ev_low = num("ev_gate_mean_return") - 2 * num("ev_gate_mean_return_se")  # mean - 2 SE
    checks = [
        check("min_auc", num("auc"), gates.min_auc, num("auc") >= gates.min_auc),
        check("max_ece", num("ece"), gates.max_ece, num("ece") <= gates.max_ece),
        check("min_brier_skill", num("brier_skill"), gates.min_brier_skill, num("brier_skill") >= gates.min_brier_skill),
        check("min_trades", num("ev_gate_trades"), gates.min_trades, num("ev_gate_trades") >= gates.min_trades),
        # The mean must clear the threshold by two standard errors (a positive mean over a
        # handful of trades is noise). With no gated trades the mean is undefined: it passes
        # only if zero trades are allowed.
        check("min_ev_return", ev_low, gates.min_ev_return, ev_low > gates.min_ev_return
              or (num("ev_gate_trades") == 0 and gates.min_trades == 0)),
    ]
    checks += calibration_checks(metrics, gates)
    # A model whose relation to the outcome is inverted on the calibration block (sigmoid
    # slope <= 0) has no ranking to trade on. Models from before the slope was measured
    # carry no value and are not judged on it.
    if "calibration_slope" in metrics:
        slope = num("calibration_slope")
        checks.append(check("calibration_slope", slope, "> 0", slope > 0))
    # The backtest gate (filled by retrain): present only when a backtest was recorded.
    if backtest is not None and "passed" in backtest:
        checks.append(check("backtest", backtest.get("summary"), backtest.get("threshold", "beats champion"),
                            backtest["passed"]))
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "time": _now()}


def calibration_checks(metrics: dict[str, Any], gates) -> list[dict[str, Any]]:
    """Calibration judged against what noise alone does at the test block's size.

    A fixed ECE threshold is too strict on a small block (a perfect forecaster shows ECE
    > 0) and too lax on a large one, and it misses a shift of every probability by the
    same amount (base-rate drift). So: calibration-in-the-large within ``max_citl_se``
    standard errors, |Spiegelhalter Z| within ``max_abs_z``, and the ECE inside the noise
    band of the same n; Z and the band carry the correction for overlapping trades
    (``dependence_factor``). Metrics recorded before a figure existed are not judged on it.
    """
    def num(key):
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    checks = []
    citl, se = num("calibration_in_the_large"), num("calibration_in_the_large_se")
    if citl is not None and se:
        ratio = abs(citl) / se
        checks.append({"name": "calibration_in_the_large", "value": f"{citl:+.4f} = {ratio:.2f} SE",
                       "threshold": f"<= {gates.max_citl_se} SE", "passed": ratio <= gates.max_citl_se})
    z = num("spiegelhalter_z_effective")
    z = z if z is not None else num("spiegelhalter_z")
    if z is not None:
        checks.append({"name": "spiegelhalter_z", "value": z, "threshold": f"|Z| <= {gates.max_abs_z}",
                       "passed": abs(z) <= gates.max_abs_z})
    band = metrics.get("ece_noise_band_90_effective") or metrics.get("ece_noise_band_90")
    ece = num("ece")
    if gates.ece_within_noise_band and ece is not None and isinstance(band, list) and len(band) == 2:
        checks.append({"name": "ece_noise_band", "value": ece, "threshold": f"<= {float(band[1]):.4f} (90% band of "
                       "a calibrated forecaster at this n)", "passed": ece <= float(band[1])})
    return checks


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / "bundle.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path} is missing: {bundle_dir} is not a training bundle") from None
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path} is not valid JSON: {err}") from None


def _bundle_name(rel: Any, bundle_dir: Path) -> str:
    """A file name a bundle.json lists: a plain relative path inside the bundle folder.

    bundle.json is input we did not write (a bundle can come from anywhere): a listed
    '../strategies/X.py' would otherwise be copied *into* the store from outside it, or
    written over files next to it.
    """
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        raise RegistryError(f"{bundle_dir}/bundle.json lists {rel!r}: file names must be relative paths inside "
                            "the bundle folder")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RegistryError(f"{bundle_dir}/bundle.json lists {rel!r}: '.', '..' and empty parts are refused")
    probe = bundle_dir
    for part in parts:
        probe = probe / part
        if probe.is_symlink():
            raise RegistryError(f"{bundle_dir}/bundle.json lists {rel!r}: {probe} is a symlink; copy the real file")
    return rel


def _ensemble_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """An ensemble version's method and members (family, trial), for `ftml registry show`."""
    if manifest.get("family") != "ensemble":
        return None
    params = manifest.get("params") or {}
    return {"method": params.get("method"),
            "members": [{"family": m.get("family"), "trial": m.get("trial")} for m in params.get("members", [])]}


def _bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """The files a bundle names (manifest, model, calibrator, metrics, plots); nothing else."""
    manifest = _read_manifest(bundle_dir)
    plots = manifest.get("plots", {})
    model_files = manifest.get("model_files", [])
    if not isinstance(plots, dict) or not isinstance(model_files, list):
        raise RegistryError(f"{bundle_dir}/bundle.json: 'plots' must be an object and 'model_files' a list")
    names = ["bundle.json", *model_files, manifest.get("calibrator_file", "calibrator.json"),
             manifest.get("metrics_file", "metrics.json"), *plots.values()]
    root = bundle_dir.resolve()
    files = {}
    for rel in names:
        src = bundle_dir / _bundle_name(rel, bundle_dir)
        if not src.resolve().is_relative_to(root):
            raise RegistryError(f"{src}: resolves outside the bundle folder {root}")
        if src.is_symlink() or not src.is_file():
            raise RegistryError(f"{src}: missing or not a regular file")
        if src.stat().st_size > MAX_FILE_BYTES:
            raise RegistryError(f"{src}: {src.stat().st_size} bytes, over the {MAX_FILE_BYTES} byte ceiling for one "
                                "artifact file")
        files[rel] = src
    return files


def open_registry(store: str | Path | Registry) -> Registry:
    """A string or path means a store folder; a Registry is used as it is."""
    return store if isinstance(store, Registry) else Registry(Path(store))
