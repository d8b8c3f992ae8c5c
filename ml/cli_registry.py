"""``ftml registry ...``: list, show, validate, promote, rollback, disable, enable, archive,
delete, history, verify and diff, with rich tables for people and ``--json`` for scripts.

Exit codes: 0 done; 1 ``verify`` found a problem or ``validate`` failed a gate; 2 the
operation was refused (unknown model or version, a transition that is not allowed, the
lock held too long) and nothing was changed.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ml import config as mlconfig
from ml import jsonsafe
from ml.display import make_console
from ml.registry import Registry, RegistryError, open_registry

EXIT_OK, EXIT_FAILED_CHECK = 0, 1
EPILOG = ("Exit codes: 0 done; 1 verify found a problem or validate failed a gate; "
          "2 refused (unknown model/version, transition not allowed, lock busy): nothing changed.")


def _registry(args) -> tuple[Registry, mlconfig.MLConfig]:
    cfg = mlconfig.load(args.config)
    return open_registry(args.store or cfg.registry.path), cfg


def _emit(args, data: Any, render) -> None:
    if args.json:
        print(jsonsafe.dumps(data))
    else:
        render(make_console(), data)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _family(entry: dict) -> str | None:
    """The family, or an ensemble's method and members ('stack: lightgbm+logistic')."""
    ens = entry.get("ensemble")
    if not ens:
        return entry.get("family")
    return f"{ens.get('method')}: " + "+".join(str(m.get("family")) for m in ens.get("members", []))


def cmd_list(args) -> int:
    reg, _ = _registry(args)
    doc = reg.read()
    rows = [
        {"model": name, "version": int(vid), "status": v["status"], "created": v["created"], "family": _family(v),
         "auc": v.get("metrics", {}).get("auc"), "ece": v.get("metrics", {}).get("ece"),
         "gates": None if v.get("gates") is None else v["gates"]["passed"], "train_end": v.get("train_end")}
        for name, model in sorted(doc["models"].items()) if not args.name or name == args.name
        for vid, v in sorted(model["versions"].items(), key=lambda kv: int(kv[0]))
    ]

    def render(console, rows):
        table = Table(title=f"Registry {reg.root}")
        columns = ("model", "version", "status", "family", "auc", "ece", "gates", "trained to")
        for col in columns:
            table.add_column(col, no_wrap=col in ("status", "version"))
        for r in rows:
            style = "bold green" if r["status"] == "production" else ("red" if r["status"] == "failed" else None)
            cells = [r["model"], r["version"], r["status"], r["family"], r["auc"], r["ece"],
                     {True: "pass", False: "FAIL", None: "-"}[r["gates"]], (r["train_end"] or "-")[:10]]
            table.add_row(*[_fmt(c) for c in cells], style=style)
        console.print(table if rows else "The registry is empty: train a model with `ftml train`.")

    if args.name and args.name not in doc["models"]:
        known = ", ".join(sorted(doc["models"])) or "none yet: train one with `ftml train`"
        raise RegistryError(f"no model named '{args.name}' in {reg.root} (models: {known})")
    _emit(args, rows, render)
    return EXIT_OK


def cmd_show(args) -> int:
    reg, _ = _registry(args)
    entry = reg.version(args.name, args.version) if args.version else reg.production(args.name)
    if entry is None:
        raise RegistryError(f"'{args.name}' has no production version; pass a version number")

    def render(console, e):
        console.print(f"[bold]{e['name']} v{e['id']}[/] ({e['status']}), {e.get('family')}, created {e['created']}")
        console.print(f"  folder: {reg.root / e['path']}")
        console.print(f"  feature_set_id {e.get('feature_set_id')}, {len(e.get('feature_names', []))} features, "
                      f"timeframe {e.get('timeframe')}, strategy {e.get('strategy')}")
        console.print(f"  label: {e.get('label')}")
        for block, span in (e.get("ranges") or {}).items():
            console.print(f"  {block}: {span[0]} -> {span[1]}")
        console.print(f"  train_end: {e.get('train_end')}; tracking: {e.get('tracking')}")
        table = Table(title="test metrics")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in (e.get("metrics") or {}).items():
            table.add_row(k, _fmt(v))
        console.print(table)
        if e.get("gates"):
            _print_gates(console, e["gates"])

    _emit(args, entry, render)
    return EXIT_OK


def _print_gates(console, gates) -> None:
    table = Table(title="gates: " + ("[green]passed[/]" if gates["passed"] else "[red]failed[/]"))
    for col in ("gate", "value", "threshold", "result"):
        table.add_column(col)
    for c in gates["checks"]:
        table.add_row(c["name"], _fmt(c["value"]), _fmt(c["threshold"]), "pass" if c["passed"] else "[red]FAIL[/]")
    console.print(table)


def cmd_validate(args) -> int:
    reg, cfg = _registry(args)
    result = reg.validate(args.name, args.version, cfg.gate)
    _emit(args, result, lambda console, r: _print_gates(console, r))
    return EXIT_OK if result["passed"] else EXIT_FAILED_CHECK


def _done(args, action: str, entry: dict[str, Any]) -> int:
    _emit(args, {"action": action, "model": entry["name"], "version": entry["id"], "status": entry["status"]},
          lambda console, d: console.print(f"{action}: {d['model']} v{d['version']} is now {d['status']}"))
    return EXIT_OK


def cmd_promote(args) -> int:
    reg, _ = _registry(args)
    return _done(args, "promote", reg.promote(args.name, args.version, force=args.force, reason=args.reason or ""))


def cmd_rollback(args) -> int:
    reg, _ = _registry(args)
    return _done(args, "rollback", reg.rollback(args.name, reason=args.reason or ""))


def cmd_disable(args) -> int:
    reg, _ = _registry(args)
    model = reg.disable(args.name, reason=args.reason or "")
    _emit(args, {"action": "disable", "model": args.name, "disabled": model["disabled"]},
          lambda console, d: console.print(f"[red]{d['model']} disabled[/]: gated strategies stop entering on their "
                                           "next candle; open trades keep their exits. `ftml registry enable` lifts it."))
    return EXIT_OK


def cmd_enable(args) -> int:
    reg, _ = _registry(args)
    model = reg.enable(args.name, reason=args.reason or "")
    _emit(args, {"action": "enable", "model": args.name, "production": model.get("production")},
          lambda console, d: console.print(f"{d['model']} enabled: production v{d['production']} trades again from "
                                           "the next candle"))
    return EXIT_OK


def cmd_archive(args) -> int:
    reg, _ = _registry(args)
    return _done(args, "archive", reg.archive(args.name, args.version, reason=args.reason or "", force=args.force))


def cmd_delete(args) -> int:
    reg, _ = _registry(args)
    reg.delete(args.name, args.version, reason=args.reason or "")
    _emit(args, {"action": "delete", "model": args.name, "version": args.version},
          lambda console, d: console.print(f"deleted {d['model']} v{d['version']} and its files"))
    return EXIT_OK


def cmd_history(args) -> int:
    reg, _ = _registry(args)
    events = reg.history(args.name)

    def render(console, events):
        table = Table(title="Registry events (oldest first)")
        for col in ("seq", "time", "action", "model", "version", "reason", "user@host", "pid", "command"):
            table.add_column(col)
        for e in events:
            table.add_row(str(e["seq"]), e["time"], e["action"], e["model"], _fmt(e["version"]), e.get("reason", ""),
                          f"{e.get('user')}@{e.get('host')}", str(e.get("pid")), (e.get("command") or "")[:40])
        console.print(table)

    _emit(args, events, render)
    return EXIT_OK


def cmd_verify(args) -> int:
    reg, _ = _registry(args)
    doc = reg.read()
    results = []
    for name, model in sorted(doc["models"].items()):
        if args.name and name != args.name:
            continue
        for vid, entry in sorted(model["versions"].items(), key=lambda kv: int(kv[0])):
            results.append({"model": name, "version": int(vid), "problems": reg.verify_version(entry)})
    bad = [r for r in results if r["problems"]]
    # Harmless but worth knowing: left by killed writers; the next register removes them.
    leftovers = [str(p.relative_to(reg.root)) for p in reg.leftovers(doc)]

    def render(console, results):
        for r in results:
            mark = "[green]ok[/]" if not r["problems"] else "[red]" + "; ".join(r["problems"]) + "[/]"
            console.print(f"{r['model']} v{r['version']}: {mark}")
        console.print(f"{len(results)} versions checked, {len(bad)} with problems")
        if leftovers:
            console.print(f"[yellow]{len(leftovers)} leftovers of killed writers (removed by the next register): "
                          f"{', '.join(leftovers)}[/]")

    _emit(args, {"checked": len(results), "bad": len(bad), "results": results, "leftovers": leftovers},
          lambda c, d: render(c, d["results"]))
    return EXIT_FAILED_CHECK if bad else EXIT_OK


def cmd_diff(args) -> int:
    reg, _ = _registry(args)
    a, b = reg.version(args.name, args.a), reg.version(args.name, args.b)
    keys = ("family", "ensemble", "feature_set_id", "timeframe", "strategy", "train_end", "status")
    diff = {
        "fields": {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)},
        "label": {k: [a["label"].get(k), b["label"].get(k)] for k in set(a.get("label") or {}) | set(b.get("label") or {})
                  if (a.get("label") or {}).get(k) != (b.get("label") or {}).get(k)},
        "metrics": {k: [a["metrics"].get(k), b["metrics"].get(k)] for k in sorted(set(a["metrics"]) | set(b["metrics"]))},
        "ranges": {k: [a["ranges"].get(k), b["ranges"].get(k)] for k in ("train", "calibration", "test")},
    }

    def render(console, d):
        table = Table(title=f"{args.name}: v{args.a} vs v{args.b}")
        for col in ("", f"v{args.a}", f"v{args.b}"):
            table.add_column(col)
        for section in ("fields", "label", "metrics", "ranges"):
            for k, (x, y) in d[section].items():
                table.add_row(f"{section}.{k}", _fmt(x), _fmt(y), style="yellow" if x != y else None)
        console.print(table)

    _emit(args, diff, render)
    return EXIT_OK


def add_parser(sub) -> None:
    reg = sub.add_parser("registry", help="list, validate, promote and roll back model versions",
                         description=__doc__, epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = reg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    def action(name, func, help_text, version=None, version_optional=False, name_optional=False):
        p = rsub.add_parser(name, help=help_text, epilog=EPILOG)
        p.add_argument("-c", "--config", default="config.json")
        p.add_argument("--store", help="registry folder (default: ml.registry.path from the config)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name_optional:
            p.add_argument("name", nargs="?", help="model name (default: all)")
        else:
            p.add_argument("name", help="model name, e.g. trend_pullback")
        if version:
            p.add_argument("version", type=int, nargs="?" if version_optional else None,
                           help="version number (see `ftml registry list`)")
        p.set_defaults(func=func)
        return p

    action("list", cmd_list, "all versions with status and headline metrics", name_optional=True)
    action("show", cmd_show, "one version in full (default: production)", version=True, version_optional=True)
    action("validate", cmd_validate, "run the configured gates on a staged version", version=True)
    p = action("promote", cmd_promote, "make a validated version production", version=True)
    p.add_argument("--force", action="store_true", help="promote without passing gates (needs --reason)")
    p.add_argument("--reason", help="why (recorded in the event log)")
    p = action("rollback", cmd_rollback, "restore the previous production version")
    p.add_argument("--reason")
    p = action("disable", cmd_disable, "kill switch: close every gate of this model now (production is kept)")
    p.add_argument("--reason", required=True, help="why (recorded in the event log)")
    p = action("enable", cmd_enable, "lift the kill switch")
    p.add_argument("--reason")
    p = action("archive", cmd_archive, "retire a version (production only with --force --reason)", version=True)
    p.add_argument("--reason")
    p.add_argument("--force", action="store_true", help="archive the production version: its gates close")
    p = action("delete", cmd_delete, "delete a non-production version and its files", version=True)
    p.add_argument("--reason")
    action("history", cmd_history, "the event log: who did what, when and why", name_optional=True)
    action("verify", cmd_verify, "recompute every sha256; exit 1 on any mismatch", name_optional=True)
    p = action("diff", cmd_diff, "metrics and config of two versions side by side")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
