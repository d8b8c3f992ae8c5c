"""Registry operations per second: 4 processes contending on one store vs 1 process alone.

Each operation is a register (copy + hash the bundle's small files, commit) or a forced
promote (its smoke test in a child runs once per distinct version's bytes, then is
remembered), both under the inter-process lock with fsync + os.replace. Reference in the same run: the same
number of operations from a single process. Goal: contention costs no more than the
lock's serialisation (ratio of ops/s close to 1, never a collapse).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit

OPS_PER_PROCESS = 40
PROCESSES = 4
WORKER = """
import sys
from ml.registry import open_registry
reg = open_registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    entry = reg.register(sys.argv[2], "bench")
    if i % 2:
        reg.promote("bench", entry["id"], force=True, reason="bench")
"""


def small_bundle(folder: Path) -> Path:
    """A real bundle of a small logistic model: promote smoke-tests what it makes live (it
    loads and predicts in a child process), so a fake model file would be refused."""
    import numpy as np

    from ml.bundle import save_bundle
    from ml.calibration import SigmoidCalibrator
    from ml.models import FAMILIES

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(500, 8)), rng.integers(0, 2, 500)
    model = FAMILIES["logistic"].fit({"C": 1.0}, X, y, X, y, 1, 0)
    save_bundle(folder, model, SigmoidCalibrator(), {"model_name": "bench", "feature_names": [f"f{i}" for i in range(8)],
                                                     "feature_set_id": "bench", "plots": {}, "metrics": {"auc": 0.6},
                                                     "train_end": "2024-01-01T00:00:00+00:00"}, {"auc": 0.6})
    return folder


def ops_per_second(store: Path, bundle: Path, processes: int, ops_each: int) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store), str(bundle), str(ops_each)])
             for _ in range(processes)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a registry worker failed")
    ops = processes * ops_each * 1.5  # every second register is followed by a promote
    return ops / (time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = small_bundle(tmp / "bundle")
        alone = ops_per_second(tmp / "alone", bundle, 1, PROCESSES * OPS_PER_PROCESS)
        contended = ops_per_second(tmp / "contended", bundle, PROCESSES, OPS_PER_PROCESS)
        doc = json.loads((tmp / "contended" / "registry.json").read_text())
        versions = len(doc["models"]["bench"]["versions"])
    emit("registry", [{
        "figure": f"registry ops/s, {PROCESSES} processes contending ({versions} versions written)",
        "value": f"{contended:.1f} ops/s", "reference": f"1 process alone: {alone:.1f} ops/s",
        "ratio": round(alone / contended, 2), "goal": "no collapse under contention (ratio < 2)",
        "met": alone / contended < 2 and versions == PROCESSES * OPS_PER_PROCESS,
    }])


if __name__ == "__main__":
    main()
