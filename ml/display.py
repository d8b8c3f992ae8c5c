"""Rich tables for people; every command also has a ``--json`` form for scripts."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # ml.data imports freqtrade (2 s): registry commands do not need it
    from ml.data import DataReport

# Piped into a file or a pager, rich assumes 80 columns and cuts tables; a log is read wide.
PIPED_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    """A console for people: the terminal's width, or wide (COLUMNS, else 200) when piped."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH)


def _short(ts: str | None) -> str:
    return ts[:16] if ts else "-"


def print_data_report(report: DataReport, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(title=f"Candles in {report.datadir} ({report.timeframe}, {report.timerange or 'all dates'})")
    for name, justify in [("pair", "left"), ("rows", "right"), ("from", "left"), ("to", "left"),
                          ("gaps (missing)", "right"), ("flagged rows / file problems", "left")]:
        table.add_column(name, justify=justify)
    for rep in report.pairs:
        gaps = f"{len(rep.gaps)} ({rep.missing_candles})" if rep.gaps else "0"
        issues = [f"{check} {count}" for check, count in rep.problems.items()] + rep.notes
        text = "[green]ok[/]" if rep.ok else ("[red]" + "; ".join(issues) + "[/]" if issues else "gaps only")
        pair = f"{rep.pair} [yellow](synthetic)[/]" if rep.synthetic else rep.pair
        table.add_row(pair, str(rep.rows), _short(rep.first), _short(rep.last), gaps, text)
    console.print(table)
    for rep in report.pairs:
        for check, dates in rep.examples.items():
            console.print(f"  {rep.pair} {check}: first at {', '.join(d[:16] for d in dates)}")
        for gap in rep.gaps[:3]:
            console.print(f"  {rep.pair} gap: {gap.missing_candles} candles missing after {gap.start[:16]}")
    synthetic = [rep.pair for rep in report.pairs if rep.synthetic]
    if synthetic:
        console.print(f"[bold yellow]{len(synthetic)} of {len(report.pairs)} files are SYNTHETIC, written by `ftml data "
                      f"synth` ({', '.join(synthetic[:6])}{' ...' if len(synthetic) > 6 else ''}): not a real market.[/]")
    verdict = "[green]all clean[/]" if report.ok else "[yellow]issues found: flagged rows are kept and marked bad_row[/]"
    console.print(verdict)
