"""``make bench``: run every bench/bench_*.py in its own process and rewrite docs/BENCHMARKS.md.

Each benchmark runs alone (so peak RSS is its own) with one thread for OpenMP libraries
unless it sets its own, and prints one JSON line; the table keeps every figure next to the
reference it was measured against in the same run. Results are kept in bench/results.json:
``python -m bench.run_all bench.bench_freqai`` (``make bench BENCH=bench.bench_freqai``)
reruns the named ones and keeps the others' last results, each row with its own date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results.json"
HEADER = """# Benchmarks

Written by `make bench` (bench/run_all.py); do not edit by hand. Every figure is measured
together with its reference in the same process, and the ratio is figure time / reference
time (lower is better), so it travels between machines better than the raw numbers.
"""


def run_one(module: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"running {module} ...", flush=True)
    done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"benchmark": module, "error": done.stderr.strip().splitlines()[-1:] or ["failed"], "rows": []}
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(results: list[dict]) -> str:
    first = next((r for r in results if "machine" in r), {})
    lines = [HEADER, f"Machine: {first.get('machine', '?')}.", "",
             "| benchmark | figure | value | reference | ratio | goal | met | peak RSS of the bench process | date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['benchmark']} | failed: {res['error'][0]} | | | | | | | |")
            continue
        for row in res["rows"]:
            lines.append(
                f"| {res['benchmark']} | {row['figure']} | {row['value']} | {row['reference']} | "
                f"{row['ratio']} | {row['goal']} | {'-' if row['met'] is None else 'yes' if row['met'] else 'no'} | {res['peak_rss_mb']} MB | "
                f"{res.get('date', '?')} |"
            )
    return "\n".join(lines) + "\n"


def main(names: list[str]) -> int:
    modules = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("bench_*.py"))
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {modules}", file=sys.stderr)
        return 2
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for module in names or modules:
        stored[module] = run_one(module)
    RESULTS.write_text(json.dumps(stored, indent=1) + "\n")
    DOC.write_text(render([stored[m] for m in modules if m in stored]))
    print(DOC.read_text())
    return 1 if any("error" in stored[m] for m in names or modules) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
