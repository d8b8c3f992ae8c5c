"""Load and predict with a model version in a child process before a bot or promote trusts it.

A malformed model file can crash the native library that reads it (xgboost ``.ubj``,
lightgbm ``.txt``, tree indices out of range in a skops file): SIGSEGV or SIGABRT, which
no ``try`` catches, so fail-closed would not cover it and freqtrade would die with its open
trades. The child takes that crash instead; the parent gets one line and refuses the
version. A pass is remembered by the sha256 of every file (a marker in ``<store>/.smoke/``
and in memory): the same bytes load the same way, so a bot or a promote pays the ~1-2 s
once per distinct version, not per candle or per process.

Run as ``python -m ml.smoke FOLDER`` (what the parent does).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

SMOKE_TIMEOUT_S = 120.0
SMOKE_ROWS = 64
_passed: set[str] = set()


def _marker(store: Path | None, files: dict[str, str]) -> tuple[str, Path | None]:
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    return digest, (store / ".smoke" / digest if store is not None else None)


def smoke_test(folder: Path, files: dict[str, str] | None = None, store: Path | None = None,
               timeout: float = SMOKE_TIMEOUT_S) -> str | None:
    """None when the version loads and predicts probabilities in a child; else why not.

    ``files`` (name -> sha256, already verified by the caller) identifies the bytes so a
    pass can be remembered; ``store`` is where the marker goes.
    """
    digest, marker = _marker(store, files) if files else (None, None)
    if digest and marker is not None and marker.is_file():
        _passed.add(digest)
        return None
    if digest and digest in _passed:
        _remember(marker)  # passed in this process for another store: tell this store too
        return None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "ml.smoke", str(folder)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"loading {folder} did not finish within {timeout:.0f} s in a test process"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return f"loading {folder} crashed a test process with {name}: a model file is malformed"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"loading {folder} failed in a test process: {lines[-1] if lines else 'exit ' + str(done.returncode)}"
    if digest:
        _passed.add(digest)
        _remember(marker)
    return None


def _remember(marker: Path | None) -> None:
    if marker is None:
        return
    try:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()
    except OSError:
        pass  # a read-only store: remembered in memory only


def _child(folder: str) -> int:
    import numpy as np

    from ml.bundle import load_bundle
    from ml.onnx_export import has_onnx

    # the native model, and its ONNX copy when one was exported (either may be served)
    runtimes = ["native", "onnx"] if has_onnx(Path(folder)) else ["native"]
    for runtime in runtimes:
        bundle = load_bundle(folder, runtime=runtime)
        rng = np.random.default_rng(0)
        X = rng.normal(0.0, 1.0, size=(SMOKE_ROWS, len(bundle.feature_names)))
        X[0] = 0.0
        X[1] = np.nan  # missing values are what live candles bring during warm-up
        p = bundle.predict_proba(X)
        if p.shape != (SMOKE_ROWS,) or not np.all((p >= 0) & (p <= 1)):
            print(f"{runtime} predictions are not probabilities: {p[:5]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
