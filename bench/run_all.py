"""``make bench``: run every bench/bench_*.py in its own process and rewrite docs/BENCHMARKS.md.

Each benchmark runs alone (so peak RSS is its own) with one thread for OpenMP libraries
unless it sets its own, and prints one JSON line; the table keeps every figure next to the
reference it was measured against in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
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
    lines = [HEADER, f"Machine: {first.get('machine', '?')}. Date: {first.get('date', '?')}.", "",
             "| benchmark | figure | value | reference | ratio | goal | met | peak RSS of the bench process |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['benchmark']} | failed: {res['error'][0]} | | | | | | |")
            continue
        for row in res["rows"]:
            lines.append(
                f"| {res['benchmark']} | {row['figure']} | {row['value']} | {row['reference']} | "
                f"{row['ratio']} | {row['goal']} | {'yes' if row['met'] else 'no'} | {res['peak_rss_mb']} MB |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    modules = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("bench_*.py"))
    results = [run_one(m) for m in modules]
    DOC.write_text(render(results))
    print(DOC.read_text())
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
