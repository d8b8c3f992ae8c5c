"""A pre-imported ``ftml`` for the tests: each command runs in a fork of one process that
has already imported freqtrade, the model libraries and ``ml``.

A heavy ``ftml`` command spends ~4 s importing before it does anything (freqtrade's
backtesting alone ~2.5 s), and the suite runs about a hundred of them. The forked child
is still a process of its own: its own working directory, environment, CPU affinity,
stdout/stderr files and exit code, running ``ml.cli.main`` exactly as ``python -m ml.cli``
does. Nothing it does reaches the zygote or the next command.

Protocol, one JSON line each way per command, over the zygote's stdin/stdout:
request ``{"args", "cwd", "env", "affinity", "stdout", "stderr", "timeout"}``, reply
``{"returncode"}`` or ``{"timeout": true}`` (the child's process group was killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

# What a heavy command imports first. Only imports: nothing is set up or patched here, so a
# child starts from the state a fresh interpreter reaches after these imports.
PRELOAD = (
    "freqtrade.commands", "freqtrade.main", "freqtrade.optimize.backtesting", "freqtrade.resolvers",
    "lightgbm", "xgboost", "optuna", "sklearn.linear_model", "sklearn.ensemble", "scipy.stats",
    "ml.cli", "ml.train", "ml.trade_labels", "ml.retrain", "ml.walkforward", "ml.offline", "ml.gate",
    "ml.registry", "ml.synth", "ml.data",
)


def _run_child(request: dict) -> None:
    """In the forked child: become the command's process and run it; never returns."""
    os.setpgid(0, 0)  # its own group: a timeout kills it and every worker it forked
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for source, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(source, target)
        os.close(source)
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.sched_setaffinity(0, request["affinity"])
        # numpy's global generator is not reseeded after fork (Python's random is): without
        # this, every command would draw the same "random" numbers.
        import numpy as np

        np.random.seed()
        sys.argv = ["ftml", *request["args"]]
        sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
        import ml.cli

        # As under `python -m ml.cli`: spawned workers (multiprocessing's spawn and
        # forkserver) re-import the main module by its name.
        sys.modules["__main__"] = ml.cli
        code = ml.cli.main(request["args"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    _exit(code)


def _exit(code) -> None:
    """What the interpreter does on exit that a process can observe: join non-daemon
    threads, run atexit handlers (logging, multiprocessing, wandb), flush the streams, and
    exit with the code SystemExit would give. Not the teardown of every module object, which
    takes ~1 s with these libraries loaded and changes nothing outside the process."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


def serve() -> None:
    # The protocol gets private copies of stdin/stdout; whatever an import prints goes to stderr.
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for name in PRELOAD:
        __import__(name)
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _run_child(request)
        replies.write(json.dumps(_wait(pid, request["timeout"])) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
