"""Which candle files in a data folder are synthetic: ``ftml data synth`` records each file it
writes, with its sha256, in ``<datadir>/ftml-synthetic.json``.

A file counts as synthetic only while its bytes are the ones recorded, so a real
``freqtrade download-data`` over it makes it real again without anyone editing the marker.
``data synth`` refuses to overwrite a file it did not write (real candles, most likely)
unless told ``--force``; ``data check``, ``train`` and ``demo`` say which files are synthetic.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml.errors import FtmlError
from ml.registry import sha256_file

MARKER = "ftml-synthetic.json"


class OverwriteRefused(FtmlError):
    """``data synth`` would replace candle files it did not write."""


def read_marker(datadir: str | Path) -> dict[str, dict[str, Any]]:
    """File name -> what wrote it; empty when there is no (readable) marker."""
    try:
        files = json.loads((Path(datadir) / MARKER).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def synthetic_files(datadir: str | Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The files (by name) that still hold exactly what ``data synth`` wrote."""
    datadir = Path(datadir)
    found = {}
    for name, info in read_marker(datadir).items():
        path = datadir / name
        if (names is None or name in names) and path.is_file() and sha256_file(path) == info.get("sha256"):
            found[name] = info
    return found


def refuse_foreign(paths: list[Path]) -> None:
    """Raise if any existing path holds candles ``data synth`` did not write."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        if path.exists():
            by_folder.setdefault(path.parent, []).append(path)
    foreign = [p.name for folder, ps in by_folder.items()
               for p in ps if p.name not in synthetic_files(folder, [q.name for q in ps])]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        verb = "holds" if len(foreign) == 1 else "hold"
        raise OverwriteRefused(f"{shown} in {paths[0].parent} {verb} candles ftml did not write (real data?): write the "
                               "synthetic market to another folder with --datadir, or pass --force to overwrite them")


def mark(datadir: str | Path, paths: list[Path], info: dict[str, Any]) -> None:
    """Record ``paths`` as synthetic (atomically: a crash never leaves a half marker)."""
    datadir = Path(datadir)
    files = read_marker(datadir)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for path in paths:
        files[path.name] = {**info, "written": stamp, "sha256": sha256_file(path)}
    tmp = datadir / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"note": "candle files written by `ftml data synth`; a file whose sha256 differs "
                               "(e.g. downloaded over) is real", "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, datadir / MARKER)


def describe(info: dict[str, Any]) -> str:
    """One short phrase, e.g. 'synthetic (planted market, seed 4)'."""
    return f"synthetic ({info.get('market', '?')} market, seed {info.get('seed', '?')})"
