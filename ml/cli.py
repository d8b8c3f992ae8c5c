"""``ftml``: the command line. A thin shell over the ``ml`` modules.

Exit codes: 0 success, 1 unexpected failure, 2 a problem the user can fix (bad config,
missing data, bad arguments); the message says what to do. ``ftml freqtrade`` returns
freqtrade's own exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ml import config as mlconfig
from ml import jsonsafe
from ml.errors import FtmlError

EXIT_OK, EXIT_FAILURE = 0, 1  # user-fixable errors exit with FtmlError.exit_code (2)
logger = logging.getLogger("ftml")


class UserError(FtmlError):
    """A bad combination of command-line arguments."""


def freqtrade_settings(config_path: str | Path) -> dict[str, Any]:
    """The freqtrade part of config.json with the paths freqtrade would derive."""
    raw = mlconfig.read_json(config_path)
    mlconfig.from_dict(raw.get("ml"), source=str(config_path))  # one config: fail early on typos
    user_data = Path(raw.get("user_data_dir", "user_data"))
    exchange = raw.get("exchange", {}).get("name", "binance").lower()
    return {
        "timeframe": raw.get("timeframe", "1h"),
        "pairs": list(raw.get("exchange", {}).get("pair_whitelist", [])),
        # As freqtrade: <user_data_dir>/data/<exchange> (freqtrade ignores a "datadir" key in
        # the file, so we do too; commands take --datadir instead).
        "datadir": user_data / "data" / exchange,
        "data_format": raw.get("dataformat_ohlcv", "feather"),
        "user_data_dir": user_data,
        "exchange": exchange,
    }


def timerange_arg(text: str) -> str:
    """argparse type: a freqtrade timerange, refused with a usage line (exit 2), not a traceback."""
    from freqtrade.configuration.timerange import TimeRange

    try:
        TimeRange.parse_timerange(text)
    except Exception:  # noqa: BLE001 - freqtrade raises its own ConfigurationError
        raise argparse.ArgumentTypeError(f"'{text}' is not a freqtrade timerange: use YYYYMMDD-YYYYMMDD, "
                                         "YYYYMMDD- or -YYYYMMDD (e.g. 20240101-20250101)") from None
    return text


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return int(text)


# ---------------------------------------------------------------- data check / synth
def cmd_data_check(args: argparse.Namespace) -> int:
    from ml.data import available_pairs, load_candles
    from ml.display import print_data_report

    ft = freqtrade_settings(args.config) if Path(args.config).exists() or not args.datadir else {}
    datadir = Path(args.datadir or ft["datadir"])
    timeframe = args.timeframe or ft.get("timeframe", "1h")
    data_format = args.data_format or ft.get("data_format", "feather")
    if args.pairs == ["all"]:
        pairs = available_pairs(datadir, timeframe, data_format)
    else:
        pairs = args.pairs or ft.get("pairs", [])
    if not pairs:
        raise UserError(f"No pairs to check in {datadir} at {timeframe}: pass --pairs, or --pairs all.")
    _, report = load_candles(datadir, pairs, timeframe, args.timerange, data_format, args.min_candles)
    if args.json:
        print(jsonsafe.dumps(report.to_dict()))
    else:
        print_data_report(report)
    return EXIT_FAILURE if (args.fail_on_issues and not report.ok) else EXIT_OK


def cmd_data_synth(args: argparse.Namespace) -> int:
    from ml.synth import write_market
    from ml.synth_marker import MARKER

    ft = freqtrade_settings(args.config) if Path(args.config).exists() else {}
    datadir = Path(args.datadir or ft.get("datadir", "user_data/data/binance"))
    pairs = args.pairs or ft.get("pairs")
    if not pairs:
        raise UserError("No pairs: pass --pairs ETH/BTC LTC/BTC ... or a config with a pair_whitelist.")
    timeframe = args.timeframe or ft.get("timeframe", "1h")
    files = write_market(
        datadir, pairs, timeframe, args.candles, args.market, args.seed, args.start, args.flip_at,
        hour_drift=args.hour_drift, force=args.force,
    )
    summary = {
        "market": args.market,
        "synthetic": True,
        "pairs": pairs,
        "timeframe": timeframe,
        "candles": args.candles,
        "seed": args.seed,
        "files": [str(f) for f in files],
        "marker": str(datadir / MARKER),
    }
    print(jsonsafe.dumps(summary))
    return EXIT_OK


# ---------------------------------------------------------------- config
def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = mlconfig.load(args.config)
    print(jsonsafe.dumps(cfg.model_dump(), indent=2))
    return EXIT_OK


# ---------------------------------------------------------------- freqtrade
def cmd_replay_report(args: argparse.Namespace) -> int:
    from ml.replay_report import print_comparison, report

    result = report(args.config, args.strategy, args.db)
    if args.json:
        print(jsonsafe.dumps(result.as_dict()))
    else:
        print_comparison(result)
    return EXIT_FAILURE if result.unexplained else EXIT_OK


def cmd_freqtrade(args: argparse.Namespace) -> int:
    from ml.offline import run_freqtrade

    replay = None
    if args.replay:
        from ml.replay import ReplaySettings, parse_date, parse_replay

        if not args.offline:
            raise UserError("--replay needs --offline: the replayed exchange is the stored candles")
        start, speed = parse_replay(args.replay)
        until = parse_date(args.replay_until) if args.replay_until else None
        replay = ReplaySettings(start, speed, until, args.replay_candles)
    elif args.replay_until or args.replay_candles:
        raise UserError("--replay-until/--replay-candles need --replay START")
    return run_freqtrade(args.freqtrade_args, offline=args.offline, replay=replay)


# ---------------------------------------------------------------- train
def training_overrides(cfg: mlconfig.MLConfig, args: argparse.Namespace) -> mlconfig.MLConfig:
    """Apply command-line overrides and validate them like config values."""
    data = cfg.model_dump()
    training = data["training"]
    for key in ("trials", "timeout", "workers", "seed", "storage", "study", "ensemble_members"):
        if getattr(args, key, None) is not None:
            training[key] = getattr(args, key)
    if args.families:
        training["families"] = args.families
    if getattr(args, "strategy", None):
        training["strategy"] = args.strategy
    if args.tracking:
        data["tracking"]["mode"] = args.tracking
    if not training.get("strategy"):
        raise UserError("Which strategy's trades should the model learn from? Pass --strategy MyStrategy (its class "
                        "name, as for freqtrade) or set ml.training.strategy in the config.")
    from ml.trade_labels import strategy_name

    # Named after the user's strategy class: the name its gated twin (MLGate) looks up.
    data["model"]["name"] = getattr(args, "model", None) or strategy_name(args.config, training["strategy"])
    return mlconfig.from_dict(data, source="command line")


def cmd_train(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ml.display import make_console
    from ml.train import TrainRequest, train

    cfg = training_overrides(mlconfig.load(args.config), args)
    ft = freqtrade_settings(args.config)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    user_data = Path(ft["user_data_dir"]).resolve()
    storage = cfg.training.storage or f"sqlite:///{user_data / 'optuna.sqlite3'}"
    user_data.mkdir(parents=True, exist_ok=True)
    request = TrainRequest(
        config_path=Path(args.config), strategy=cfg.training.strategy, pairs=args.pairs or ft["pairs"],
        timeframe=ft["timeframe"], timerange=args.timerange,
        output=Path(args.output) if args.output else user_data / "models" / cfg.model.name / stamp,
        storage=storage, study=cfg.training.study or f"{cfg.model.name}-{stamp}",
        tracking_mode=None, worker_only=args.worker_only,
        synthetic_data=synthetic_pairs(ft["datadir"], args.pairs or ft["pairs"], ft["timeframe"], ft["data_format"]),
        job_type=args.job_type,
    )
    if request.synthetic_data:
        logging.getLogger("ftml.train").warning(
            "Training on SYNTHETIC candles (written by `ftml data synth`) for %s: the metrics describe that market, "
            "not a real one.", ", ".join(request.synthetic_data))
    if args.worker_only and not cfg.training.study:
        raise UserError("--worker-only adds trials to a shared study: name it with --study (and --storage).")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=make_console(stderr=True), transient=True) as bar:
        trials = bar.add_task("Optuna trials", total=cfg.training.trials)
        folds = bar.add_task("  folds of trial 0", total=cfg.training.folds, visible=cfg.training.workers == 1)

        def on_fold(number: int, done: int, total: int) -> None:
            bar.update(folds, description=f"  folds of trial {number}", completed=done, total=total)

        summary = train(cfg, request, progress=lambda done: bar.update(trials, completed=done), on_fold=on_fold)
    if not args.no_register and not args.worker_only:
        from ml.registry import open_registry

        entry = open_registry(cfg.registry.path).register(
            summary["bundle"], cfg.model.name, notes=f"ftml train, study {request.study}")
        summary["registered"] = {"name": entry["name"], "version": entry["id"], "status": entry["status"],
                                 "store": cfg.registry.path}
    print(jsonsafe.dumps(summary))
    return EXIT_OK


def synthetic_pairs(datadir: Path, pairs: list[str], timeframe: str, data_format: str) -> dict[str, str]:
    """Pair -> what wrote its candle file, for the pairs whose file ``ftml data synth`` wrote."""
    from freqtrade.data.history import get_datahandler
    from freqtrade.enums import CandleType

    from ml.synth_marker import describe, synthetic_files

    if not Path(datadir).is_dir():
        return {}
    handler = get_datahandler(Path(datadir), data_format)
    names = {handler._pair_data_filename(Path(datadir), p, timeframe, CandleType.SPOT).name: p for p in pairs}
    return {names[n]: describe(info) for n, info in synthetic_files(datadir, list(names)).items()}


def strategy_model_name(config_path: str, cfg: mlconfig.MLConfig) -> str | None:
    """The model name of config.json's ``training.strategy`` (its user class), or None."""
    if not cfg.training.strategy:
        return None
    from ml.trade_labels import strategy_name

    return strategy_name(config_path, cfg.training.strategy)


# ---------------------------------------------------------------- drift
def cmd_drift(args: argparse.Namespace) -> int:
    from ml.drift_check import print_drift, run_drift

    cfg = mlconfig.load(args.config)
    ft = freqtrade_settings(args.config)
    name = args.model or (strategy_model_name(args.config, cfg) or cfg.model.name)
    report = run_drift(cfg, ft, name, args.window_days or cfg.retrain.window_days, args.config)
    if args.json:
        print(jsonsafe.dumps(report))
    else:
        print_drift(report)
    return EXIT_OK


# ---------------------------------------------------------------- retrain
def _user_data_of(config_path: str) -> Path:
    """user_data of a config, even when the config itself is what failed to load."""
    try:
        return Path(freqtrade_settings(config_path)["user_data_dir"]).resolve()
    except Exception:  # noqa: BLE001 - a broken config: log beside it
        return (Path(config_path).resolve().parent / "user_data").resolve()


def recorded(job: str, args: argparse.Namespace, run) -> int:
    """Run a cron job so that every run, refused or failed too, prints one JSON line and
    leaves a line in user_data/logs/<job>.jsonl (and a failure an entry in <job>.log): cron
    sends stderr to a file nobody reads, so a failure must be visible where people look."""
    from ml.retrain import record_run

    try:
        summary = run()
    except Exception as err:  # noqa: BLE001 - reported as a JSON line, then the usual exit code
        code = err.exit_code if isinstance(err, FtmlError) else EXIT_FAILURE
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        summary = {"decision": "error", "error": first, "exit_code": code}
        if not isinstance(err, FtmlError):
            logging.getLogger(f"ftml.{job}").exception("%s failed", job.capitalize())
        record_run(_user_data_of(args.config), summary, job)
        print(jsonsafe.dumps(summary))
        raise
    record_run(_user_data_of(args.config), summary, job)
    print(jsonsafe.dumps(summary))
    return EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    from ml.retrain import run_retrain

    def run() -> dict:
        cfg = mlconfig.load(args.config)
        from ml.recalibrate import choose_now

        ft = freqtrade_settings(args.config)
        now = choose_now(ft, args.now) if args.now else None
        if now is not None and args.download:
            raise UserError("--now replays a moment in the past: it cannot be combined with --download")
        return run_retrain(args.config, cfg, ft, args.dry_run, args.download, now)

    return recorded("retrain", args, run)


# ---------------------------------------------------------------- walkforward
def cmd_walkforward(args: argparse.Namespace) -> int:
    from ml.walkforward import WalkForward, parse_every

    cfg = mlconfig.load(args.config)
    wf = WalkForward(args.config, cfg, freqtrade_settings(args.config), args.timerange, parse_every(args.every),
                     args.strategy, args.trials, args.workers, use_cache=args.cache != "none",
                     tune_every=args.tune_every)
    result = wf.run()
    if not args.json:
        print_walkforward(result)
    print(jsonsafe.dumps({k: result[k] for k in ("model", "timerange", "overall", "trained", "reused", "timings",
                                                  "plots", "folder", "tracking")}))
    return EXIT_OK


def print_walkforward(result: dict) -> None:
    from rich.table import Table

    from ml.display import make_console

    def num(value, fmt=".4f"):
        return "-" if value is None else format(value, fmt)

    table = Table(title=f"Walk-forward {result['model']} {result['timerange'][0][:10]} -> {result['timerange'][1][:10]}")
    for col in ("step", "from", "decision", "prod", "rows", "AUC", "log loss", "base-rate LL", "CITL (SE)", "Z",
                "gated trades / profit", "un-gated trades / profit"):
        table.add_column(col)
    for s in result["steps"]:
        sc, bt = s["scores"], s["backtest"]
        table.add_row(str(s["step"]), s["moment"][:10], s["decision"], f"v{s['production']}" if s["production"] else "-",
                      str(sc.get("rows", 0)), num(sc.get("auc"), ".3f"), num(sc.get("log_loss")),
                      num(sc.get("base_rate_log_loss")),
                      f"{num(sc.get('calibration_in_the_large'), '+.3f')} ({num(sc.get('calibration_in_the_large_se'), '.3f')})",
                      num(sc.get("spiegelhalter_z"), "+.2f"),
                      f"{bt['gated']['trades']} / {bt['gated']['profit_abs']:.4f}",
                      f"{bt['ungated']['trades']} / {bt['ungated']['profit_abs']:.4f}")
    console = make_console()
    console.print(table)
    sc = result["overall"].get("scores", {})
    console.print(f"Overall: AUC {num(sc.get('auc'), '.3f')}, log loss {num(sc.get('log_loss'))} vs base rate "
                  f"{num(sc.get('base_rate_log_loss'))}, Z {num(sc.get('spiegelhalter_z'), '+.2f')}; promotions "
                  f"{result['overall']['promotions']}; trained {len(result['trained'])}, reused {len(result['reused'])}. "
                  f"Plots: {', '.join(result['plots'].values())}")


# ---------------------------------------------------------------- recalibrate
def cmd_recalibrate(args: argparse.Namespace) -> int:
    from ml.recalibrate import recalibrate

    cfg = mlconfig.load(args.config)
    if args.rollback:
        from ml.registry import open_registry

        strategy = args.strategy or cfg.training.strategy
        if not strategy:
            raise UserError("Which strategy's model? Pass --strategy MyStrategy or set ml.training.strategy.")
        from ml.trade_labels import strategy_name

        name = strategy_name(args.config, strategy)
        entry = open_registry(cfg.registry.path).rollback_calibration(name, reason=args.reason or "")
        print(jsonsafe.dumps({"model": name, "version": entry["id"], "decision": "rolled back",
                              "revision": entry.get("calibration_revision")}))
        return EXIT_OK
    return recorded("recalibrate", args, lambda: recalibrate(args.config, cfg, freqtrade_settings(args.config),
                                                              args.strategy, args.now, args.dry_run))


# ---------------------------------------------------------------- new-strategy
def cmd_new_strategy(args: argparse.Namespace) -> int:
    from ml.scaffold import write_gated_twin

    target = write_gated_twin(args.config, args.source, args.force)
    name = target.stem[:-2]
    print(f"Wrote {target}. Next:\n  ftml train -c {args.config} --strategy {name}\n"
          f"  ftml registry validate {name} 1 -c {args.config}\n  ftml registry promote {name} 1 -c {args.config}\n"
          f"  ftml freqtrade --offline backtesting -c {args.config} --strategy-list {name}ML {name}")
    return EXIT_OK


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from ml.onnx_export import export_onnx

    cfg = mlconfig.load(args.config)
    result = export_onnx(cfg, freqtrade_settings(args.config), args.name, args.version)
    parity = result["parity"]
    print(f"Exported {args.name} v{args.version} ({result['family']}) as {result['file']}, {result['bytes']:,} bytes; "
          f"max |p_onnx - p_native| {parity['max_abs_diff']:.1e} on {parity['rows']:,} feature rows. Serve it with "
          f"\"ml\": {{\"gate\": {{\"runtime\": \"onnx\"}}}}.", file=sys.stderr)
    print(jsonsafe.dumps(result))
    return EXIT_OK


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from ml.demo import run_demo

    return run_demo(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftml",
        description="Machine learning for Freqtrade strategies: data checks, synthetic markets, "
        "offline freqtrade, training, a model registry and cron retraining.",
        epilog="Exit codes: 0 ok, 1 failure, 2 a problem you can fix (the message says how).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="check candle files, or write synthetic markets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    check = data_sub.add_parser(
        "check",
        help="validate candle files and report defects",
        description="Validate OHLCV files: duplicate or unsorted dates, gaps, OHLC consistency, "
        "NaN/inf, non-positive prices, zero volume, missing, empty or too-short files. "
        "Bad rows are reported, never dropped.",
    )
    check.add_argument("-c", "--config", default="config.json", help="freqtrade config (default: %(default)s)")
    check.add_argument("--datadir", help="data directory (default: from the config)")
    check.add_argument("--pairs", nargs="+", help="pairs to check, or 'all' for every file (default: the whitelist)")
    check.add_argument("--timeframe", help="e.g. 5m, 1h (default: from the config)")
    check.add_argument("--timerange", type=timerange_arg, help="freqtrade timerange, e.g. 20240101-20240301")
    check.add_argument("--data-format", help="feather, parquet or json (default: from the config)")
    check.add_argument("--min-candles", type=int, default=0, help="flag files shorter than this")
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    check.add_argument("--fail-on-issues", action="store_true", help="exit 1 when anything is flagged")
    check.set_defaults(func=cmd_data_check)

    synth = data_sub.add_parser(
        "synth",
        help="write a synthetic market in freqtrade's format",
        description="Write synthetic candles: 'null' has no predictable component (any edge a model "
        "finds is overfitting); 'planted' adds a weak, known mean-reversion rule "
        "(see docs/ARCHITECTURE.md for the rule and its oracle AUC). Each file is recorded in "
        "<datadir>/ftml-synthetic.json, so `data check`, `train` and `demo` say the data is synthetic; "
        "files ftml did not write are never overwritten without --force.",
    )
    synth.add_argument("-c", "--config", default="config.json", help="take pairs/timeframe/datadir from here")
    synth.add_argument("--pairs", nargs="+", help="pairs to write (default: the config's whitelist)")
    synth.add_argument("--timeframe", help="candle size (default: from the config)")
    synth.add_argument("--candles", type=int, default=10_000, help="candles per pair (default: %(default)s)")
    synth.add_argument("--market", choices=["null", "planted"], default="planted")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--start", default="2024-01-01", help="first candle (default: %(default)s)")
    synth.add_argument("--flip-at", type=int, help="candle index where the planted rule reverses sign")
    synth.add_argument("--hour-drift", type=float, default=0.0,
                       help="add an intraday drift of this many volatilities per candle (up in the early UTC hours, "
                            "down in the late ones): an edge any strategy's trades show (default 0)")
    synth.add_argument("--datadir", help="where to write (default: the config's data directory)")
    synth.add_argument("--force", action="store_true",
                       help="overwrite candle files that ftml did not write (real data); without it they are refused")
    synth.set_defaults(func=cmd_data_synth)

    cfg = sub.add_parser("config", help="show the validated 'ml' section with its defaults")
    cfg.add_argument("-c", "--config", default="config.json")
    cfg.set_defaults(func=cmd_config_show)

    ft = sub.add_parser(
        "freqtrade",
        help="run freqtrade's own CLI; --offline takes exchange markets from disk",
        description="Run freqtrade unchanged. With --offline, exchange markets come from "
        "user_data/markets/<exchange>.json (cached by any online run of this command), or are "
        "built from the config's pairs and data files. Example: "
        "ftml freqtrade --offline backtesting -c config.json --strategy TrendPullback. "
        "With --replay, `trade --dry-run` runs freqtrade's real bot on the stored candles as if the time were "
        "START (a rehearsal of a deployment): ftml freqtrade --offline --replay 20250601:20 --replay-until "
        "20250701 trade --dry-run -c config.json --strategy TrendPullbackML; then ftml replay-report.",
    )
    ft.add_argument("--offline", action="store_true", help="no network: markets from cache or data")
    ft.add_argument("--replay", metavar="START[:SPEED]",
                    help="replay the stored candles from START (UTC, YYYYMMDD or YYYY-MM-DDTHH:MM) to the bot, "
                         "SPEED candles per second of wall time (default: as fast as the bot goes)")
    ft.add_argument("--replay-until", metavar="DATE", help="end the replay after the candle closing at DATE")
    ft.add_argument("--replay-candles", metavar="N", type=int, help="end the replay after N candles")
    ft.add_argument("freqtrade_args", nargs=argparse.REMAINDER, help="freqtrade's arguments")
    ft.set_defaults(func=cmd_freqtrade)

    rr = sub.add_parser(
        "replay-report",
        help="compare a finished replay's entries with a backtest over the same candles",
        description="Read the trades of `ftml freqtrade --offline --replay ... trade --dry-run` from its database "
        "(user_data/replay/<strategy>.sqlite), backtest the same strategy over the replay's window, and list the "
        "entries (pair, candle, side, tag) that differ. Differences caused by an earlier exit filling on another "
        "candle live than in the backtest are explained; any other difference exits 1.",
    )
    rr.add_argument("-c", "--config", default="config.json", help="freqtrade config (default: %(default)s)")
    rr.add_argument("--strategy", help="the replayed strategy (default: the config's strategy)")
    rr.add_argument("--db", help="the replay's sqlite file (default: user_data/replay/<strategy>.sqlite)")
    rr.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    rr.set_defaults(func=cmd_replay_report)

    tr = sub.add_parser(
        "train",
        help="tune, fit, calibrate and evaluate a model on the config's pairs",
        description="Run the strategy's label backtest (every entry signal becomes a trade in freqtrade's own "
        "backtesting engine; cached), one row per closed trade, label = its net profit > ml.label.min_profit; "
        "tune with Optuna on purged walk-forward folds of the training block, refit the best trial, "
        "calibrate on the calibration block, evaluate once on the test block, and save a bundle "
        "(model, calibrator, metrics.json, plots) plus a W&B run. Prints one JSON summary line.",
    )
    tr.add_argument("-c", "--config", default="config.json")
    tr.add_argument("--pairs", nargs="+", help="override the config's pair_whitelist")
    tr.add_argument("--job-type", choices=["train", "retrain", "demo"], default="train",
                    help="W&B job type of the run (default: %(default)s; the demo passes demo)")
    tr.add_argument("--timerange", type=timerange_arg, help="freqtrade timerange of the data to use, e.g. 20240101-20250101")
    tr.add_argument("--trials", type=int, help="Optuna trials to run now (default: training.trials)")
    tr.add_argument("--timeout", type=float, help="stop tuning after this many seconds")
    tr.add_argument("--families", nargs="+", choices=mlconfig.ALL_FAMILIES, metavar="FAMILY",
                    help=f"model families to search: {' '.join(mlconfig.ALL_FAMILIES)} (default: {' '.join(mlconfig.DEFAULT_FAMILIES)})")
    tr.add_argument("--ensemble", dest="ensemble_members", type=int, metavar="K",
                    help="also try an average and a stack of the best trial of each of the top K families (K >= 2; "
                         "0: off); used only when it beats the best single model by 2 SE out of fold "
                         "(default: training.ensemble_members)")
    tr.add_argument("--storage", help="Optuna storage URL (default: sqlite in user_data)")
    tr.add_argument("--study", help="study name; an existing study resumes (default: new, timestamped)")
    tr.add_argument("--workers", type=int, help="worker processes on the study, each on its own cores")
    tr.add_argument("--strategy", help="learn from this freqtrade strategy's own trades (its class name, as for "
                                       "freqtrade; a gated MyStrategyML means MyStrategy; default: "
                                       "ml.training.strategy). The model is named after the strategy, which "
                                       "MyStrategyML(MLGate, MyStrategy) loads")
    tr.add_argument("--model", help="registry model name (default: the strategy's class name)")
    tr.add_argument("--tracking", choices=["auto", "online", "offline", "disabled"], help="W&B mode")
    tr.add_argument("--seed", type=int, help="random seed (default: training.seed)")
    tr.add_argument("--output", help="bundle folder (default: user_data/models/<name>/<timestamp>)")

    tr.add_argument("--no-register", action="store_true", help="only write the bundle; do not register it")
    tr.add_argument("--worker-only", action="store_true",
                    help="distributed tuning: only add trials to the shared --study on --storage; fit, bundle and "
                         "register nothing. Run one process without it: that one waits for the workers' running "
                         "trials, then fits the best trial and registers it, once.")
    tr.set_defaults(func=cmd_train)

    new = sub.add_parser(
        "new-strategy",
        help="write the gated twin of your strategy: <Name>ML.py, one line of MLGate",
        description="Write <Name>ML.py next to your strategy's file: `class <Name>ML(MLGate, <Name>): pass`. "
        "It keeps every entry, exit and callback of <Name> and only removes entries whose expected value "
        "after fees is not above ml.gate.ev_margin.",
    )
    new.add_argument("-c", "--config", default="config.json")
    new.add_argument("--from", dest="source", required=True, metavar="STRATEGY",
                     help="your strategy's class name, as for freqtrade's --strategy")
    new.add_argument("--force", action="store_true", help="overwrite an existing <Name>ML.py")
    new.set_defaults(func=cmd_new_strategy)

    from ml.cli_registry import add_parser as add_registry_parser

    add_registry_parser(sub)

    drift = sub.add_parser(
        "drift",
        help="feature drift (PSI) and the production model's calibration on recent candles",
        description="Compare the production model's training rows with the most recent window: the "
        "population stability index of every feature (> 0.25 = major shift) and the model's calibration "
        "there (ECE, mean p against the hit rate).",
    )
    drift.add_argument("-c", "--config", default="config.json")
    drift.add_argument("--model", help="registry model name (default: the name of training.strategy, else ml.model.name)")
    drift.add_argument("--window-days", type=int, help="recent window (default: ml.retrain.window_days)")
    drift.add_argument("--json", action="store_true")
    drift.set_defaults(func=cmd_drift)

    wf = sub.add_parser(
        "walkforward",
        help="replay the cron job over history (retrain and recalibrate every --every), then one backtest",
        description="Walk-forward: at each step (every --every from the start of --timerange) run what `ftml retrain "
        "--now <step>` would have run on the candles known then, into a scratch registry under "
        "user_data/walkforward/; then one backtest over the whole timerange where each candle is scored by the "
        "version in production at its time, next to the un-gated strategy; and a per-step report with plots. "
        "Challengers are cached by content hash: a rerun trains only what changed.",
    )
    wf.add_argument("-c", "--config", default="config.json")
    wf.add_argument("--strategy", help="the un-gated strategy (default: ml.training.strategy); the gated one is "
                    "ml.retrain.strategy, or <strategy>ML")
    wf.add_argument("--timerange", required=True, type=timerange_arg, help="the traded range, e.g. 20250101-20260101; "
                    "training needs ml.retrain.window_days + train_days of candles before it")
    wf.add_argument("--every", default="30d", help="time between two cron runs: 30d, 2w, 12h (default: %(default)s)")
    wf.add_argument("--trials", type=positive_int, help="Optuna trials per challenger (default: ml.training.trials)")
    wf.add_argument("--tune-every", type=positive_int, default=1, metavar="K",
                    help="tune hyperparameters at every K-th step only; the steps between train once with the "
                    "latest tuned ones (default: %(default)s, tune every step, as cron does)")
    wf.add_argument("--workers", type=positive_int, default=1,
                    help="train challengers in this many processes (default: 1)")
    wf.add_argument("--cache", choices=["auto", "none"], default="auto",
                    help="none: retrain every challenger (default: reuse unchanged ones)")
    wf.add_argument("--json", action="store_true", help="only the JSON summary line")
    wf.set_defaults(func=cmd_walkforward)

    rt = sub.add_parser(
        "retrain",
        help="cron job: train a challenger, score it against the champion on the same new window, "
        "backtest both, promote only if it wins",
        description="One unattended champion-vs-challenger round (see docs/OPERATIONS.md). Never two at once "
        "(a second run exits 0 saying it is locked). Prints one JSON summary line; logs to "
        "user_data/logs/retrain.log. Exit 0 for promoted, kept, skipped or locked; non-zero only for errors.",
    )
    rt.add_argument("-c", "--config", default="config.json")
    rt.add_argument("--dry-run", action="store_true", help="train and score, but change nothing in the registry")
    rt.add_argument("--download", action="store_true", help="run freqtrade download-data first (needs a network)")
    rt.add_argument("--now", metavar="DATE", help="run as if the time were DATE (e.g. 2025-06-09 or 2025-06-09T14:00): "
                    "only candles closed and trades resolved before it are used; for replays and walk-forward")
    rt.set_defaults(func=cmd_retrain)

    rc = sub.add_parser(
        "recalibrate",
        help="cron job: refit only the production model's calibration on its newest resolved trades",
        description="Refit the calibration layer of the production model on the strategy's trades of the last "
        "ml.recalibration.window_days whose outcome is known (closed before now). The new calibrator is applied, as a "
        "revision of the same version (sha256, event, rollback), only if it beats the current one on the newest "
        "trades it was not fitted on; running bots hot-reload it. See docs/OPERATIONS.md.",
    )
    rc.add_argument("-c", "--config", default="config.json")
    rc.add_argument("--strategy", help="the un-gated strategy class (default: ml.training.strategy)")
    rc.add_argument("--now", help="treat this UTC date as now (default: the end of the newest stored candle); "
                    "trades that closed at or after it are not used")
    rc.add_argument("--dry-run", action="store_true", help="fit and compare, but change nothing in the registry")
    rc.add_argument("--rollback", action="store_true", help="use the calibrator that was active before the current "
                    "revision again")
    rc.add_argument("--reason", help="why (recorded in the registry's event log)")
    rc.set_defaults(func=cmd_recalibrate)

    ex = sub.add_parser(
        "export", help="write a registered model in another format (onnx)",
        description="Convert a registered version's model to ONNX (model.onnx in its version folder, recorded with "
        "its sha256). The calibrator stays JSON. The copy is checked against the native model on up to 10,000 "
        "feature rows of the model's pairs from the candles on disk and refused above |dp| 1e-6. Families: "
        "xgboost, lightgbm, catboost, logistic (hist_gb and random_forest are refused with the reason). Serve it "
        "with ml.gate.runtime \"onnx\".",
    )
    ex.add_argument("format", choices=["onnx"], help="the format to write")
    ex.add_argument("name", help="model name (as in `ftml registry list`)")
    ex.add_argument("version", type=int, help="version number")
    ex.add_argument("-c", "--config", default="config.json")
    ex.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the whole loop, offline, in a few minutes")
    demo.add_argument("-c", "--config", default="config.json")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except FtmlError as err:
        print(f"ftml: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
