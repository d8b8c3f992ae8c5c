"""The shape of registry.json, checked on every read.

registry.json is a file people and tools edit. A wrong type in it (``"production": "abc"``,
a list where an object belongs, ``"train_end": "yesterday"``) must become one clear
error that names the place, never a crash deep inside a running bot or a CLI traceback.
Only what the code relies on is checked; unknown keys are kept (extra="allow"), so older
and newer tools can add notes without breaking each other.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

Status = Literal["staged", "production", "archived", "failed"]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Label(_Loose):
    # Entries of earlier versions also hold their fixed barriers here (extra keys allowed).
    min_profit: StrictFloat | StrictInt = 0.0


class Outcome(_Loose):
    win: StrictFloat | StrictInt
    loss: StrictFloat | StrictInt


def _aware_iso(key: str, value: str | None) -> str | None:
    """An ISO date *with* a timezone (a naive one would make the in-sample guard compare
    wrongly), or None."""
    if value is None:
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{key} {value!r} is not an ISO date") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{key} {value!r} has no timezone")
    return value


class Revision(_Loose):
    revision: StrictInt
    file: StrictStr = Field(pattern=r"^calibrator\.r[0-9]+\.json$")  # a plain name inside the version folder
    fit_end: StrictStr
    previous: StrictInt | None = None

    @field_validator("fit_end")
    @classmethod
    def _aware(cls, value: str) -> str:
        return _aware_iso("fit_end", value)


class Version(_Loose):
    id: StrictInt
    name: StrictStr
    status: Status
    path: StrictStr
    files: dict[StrictStr, StrictStr]
    feature_set_id: StrictStr | None = None
    feature_names: list[StrictStr] = Field(default_factory=list)
    label: Label | None = None
    train_end: StrictStr | None = None
    metrics: dict[StrictStr, Any] = Field(default_factory=dict)
    outcome_returns: dict[StrictStr, Outcome] | None = None
    ev_margin: StrictFloat | StrictInt | None = None
    strategy: StrictStr | None = None
    label_source: Literal["barrier", "trades"] = "barrier"
    sides: list[Literal["long", "short"]] = Field(default_factory=lambda: ["long"])
    gates: dict[StrictStr, Any] | None = None
    backtest: dict[StrictStr, Any] | None = None
    calibration_revision: StrictInt | None = None  # the active recalibration (None: the training calibrator)
    calibration_revisions: list[Revision] = Field(default_factory=list)
    exports: dict[StrictStr, Any] = Field(default_factory=dict)  # ftml export: {"onnx": {file, parity, ...}}
    ensemble: dict[StrictStr, Any] | None = None  # ml.ensemble: members and method (None: one model)

    @field_validator("train_end")
    @classmethod
    def _aware_date(cls, value: str | None) -> str | None:
        return _aware_iso("train_end", value)

    @field_validator("ev_margin")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("ev_margin must be a finite number")
        return value


class Model(_Loose):
    next_id: StrictInt = Field(ge=1)
    production: StrictInt | None = None
    production_history: list[StrictInt] = Field(default_factory=list)
    versions: dict[StrictStr, Version]
    disabled: dict[StrictStr, Any] | None = None  # the kill switch (ftml registry disable)


class Event(_Loose):
    seq: StrictInt
    action: StrictStr
    model: StrictStr | None = None


class Document(_Loose):
    schema_version: StrictInt
    models: dict[StrictStr, Model]
    events: list[Event]


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error["loc"]) or "(top level)"


def problems(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the schema, as 'path: message' lines (empty when fine)."""
    if not isinstance(doc, dict):
        return [f"(top level): expected an object, got {type(doc).__name__}"]
    try:
        parsed = Document.model_validate(doc)
    except ValidationError as err:
        return [f"{_where(e)}: {e['msg']}" for e in err.errors()[:5]]
    found = []
    for name, model in parsed.models.items():
        for key, version in model.versions.items():
            if key != str(version.id) or version.name != name:
                found.append(f"models.{name}.versions.{key}: holds id {version.id} of model {version.name!r}")
            numbers = [r.revision for r in version.calibration_revisions]
            if version.calibration_revision is not None and version.calibration_revision not in numbers:
                found.append(f"models.{name}.versions.{key}.calibration_revision: {version.calibration_revision} is "
                             "not among its calibration_revisions")
            for revision in version.calibration_revisions:
                if revision.file not in version.files:
                    found.append(f"models.{name}.versions.{key}: calibration revision {revision.revision}'s file "
                                 f"{revision.file} has no sha256 in files")
        if model.production is not None:
            entry = model.versions.get(str(model.production))
            if entry is None:
                found.append(f"models.{name}.production: version {model.production} does not exist")
            elif entry.status != "production":
                found.append(f"models.{name}.production: version {model.production} has status {entry.status!r}")
        live = [v.id for v in model.versions.values() if v.status == "production"]
        if len(live) > 1 or (live and live[0] != model.production):
            found.append(f"models.{name}: versions {live} are marked production, the pointer says {model.production}")
    return found
