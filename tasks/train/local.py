"""Local mode (`num_workers: 0`) through the runner: the training runs in a child process started
before the MLflow run opens, so the command's fixed costs overlap instead of adding up.

Why: a bare open_clip script pays for its imports (torch, open_clip) and its steps. The stage pays
for those and for MLflow (its import and SQLite store, ~2.5 CPU seconds that hold the GIL, so no
thread of the same process can hide them), the run's tags and params, the export's imports. Here
the runner calls `prestart` first thing (after the params are valid and the data root's inputs
are pulled): the child checks the inputs (`stage.preflight`), prepares the run folder, builds the
model and the data and trains, while the parent opens MLflow, creates the run, logs the params and
prefetches the export (tasks/train/tracking.py). The parent never imports torch.

What crosses the pipe (child -> parent), in order:
  ("prepared", {...})      the inputs are valid: shard list, sample counts, run and model folders
  ("step", step, values, ms)  one logged step's metrics with the child's timestamp; the parent
                           writes them to the run in batches (tracking.StepLogger), so the run
                           holds the same metrics, steps and timestamps as an in-process run
  ("flush",)               a checkpoint was written: the parent writes its buffer now
  ("done", seconds)        model folder and summary.json written; seconds spent in train_worker
  ("error", ...)           the child's exception (pickled when it round-trips), its type, message
                           and formatted traceback: re-raised in the parent as the same type and
                           message (the CLI's one-line errors stay as they were), the traceback
                           as its cause (`ChildTraceback`, as concurrent.futures does)
The parent logs and registers the model folder while the child exits.

Start method (a choice, written down): fork when the parent is single-threaded and has not
imported torch (the `clipmill` command at that point holds only the CLI, pydantic and the
registry: the child starts in milliseconds with them loaded); otherwise a fresh interpreter
(`python -c`, the pipe's end inherited; a test process, a flow worker, a notebook: forking a
process with threads or an initialised torch can deadlock the child). Not multiprocessing's
spawn: it re-imports the caller's `__main__`, which breaks a script that calls the runner
without an `if __name__ == "__main__"` guard.

Cleanup: the child dies with its parent (Linux parent-death signal SIGKILL; elsewhere a watchdog
thread polling the parent's pid), ignores SIGINT (the parent decides: Ctrl-C in a terminal reaches
both) and turns SIGTERM into SystemExit so its `finally` blocks run. The parent terminates it
(SIGTERM, then SIGKILL after `GRACE_S`) whenever the stage ends before the child finished: an
error on either side, Ctrl-C, the parent's own SIGTERM (the CLI turns it into SystemExit).
Direct calls of `tasks.train.stage.run(params)` (library use, tests that patch the loop) are not
prestarted and train in the calling process, as before.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tasks.train.params import TrainParams

GRACE_S = 10.0  # seconds a terminated child has to run its cleanup before it is killed
_PENDING: dict[int, LocalTraining] = {}  # id(params) -> the child the runner started for them


class TrainProcessError(RuntimeError):
    """The training process ended without a result (killed, crashed, or its error unreadable)."""


class ChildTraceback(Exception):
    """The training process's formatted traceback, the cause of the error re-raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


@contextlib.contextmanager
def prestart(params: TrainParams) -> Iterator[LocalTraining | None]:
    """The runner's hook (registry `prestart`), entered before the MLflow run opens: in local
    mode start the training process now; `take(params)` in the stage's run() finds it. Closed on
    the way out (terminated if it is still running: the stage failed or was interrupted)."""
    if params.num_workers != 0:  # Ray Train: the runner starts Ray, the stage launches workers
        yield None
        return
    child = LocalTraining(params)
    _PENDING[id(params)] = child
    try:
        yield child
    finally:
        _PENDING.pop(id(params), None)
        child.close()


def take(params: TrainParams) -> LocalTraining | None:
    """The child `prestart` started for exactly these params (the runner passes the same object
    to both), or None: the caller trains in its own process."""
    child = _PENDING.get(id(params))
    return child if child is not None and child.params is params else None


def start_method() -> str:
    """fork while it is safe (one thread, no torch yet), else exec (see the module docstring)."""
    safe = threading.active_count() == 1 and "torch" not in sys.modules
    return "fork" if safe and "fork" in multiprocessing.get_all_start_methods() else "exec"


class _Exec:
    """An exec'd child (subprocess.Popen) behind the few methods of multiprocessing.Process used
    here: pid, exitcode (negative: the signal), join(timeout), terminate(), kill()."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


class LocalTraining:
    """The parent's handle on the training process: its pipe, the messages, its end."""

    def __init__(self, params: TrainParams) -> None:
        self.params = params
        self.method = start_method()
        dump = params.model_dump(mode="json")
        # the caller's torch threads, when it set them (a test process, a notebook): in-process
        # training would have used them; 0 = torch's default
        torch = sys.modules.get("torch")
        threads = int(torch.get_num_threads()) if torch is not None else 0
        self._conn, child_end = multiprocessing.Pipe(duplex=True)
        # what the parent printed must not be printed again by a forked child's buffers
        sys.stdout.flush()
        sys.stderr.flush()
        self.process: Any
        if self.method == "fork":
            self.process = multiprocessing.get_context("fork").Process(
                target=child_main,
                args=(child_end, dump, os.getpid(), threads),
                name="clipmill-train",
            )
            self.process.start()
        else:
            # exec'd, not multiprocessing's spawn: spawn re-imports the caller's __main__
            # module, which a script calling the runner without a main guard cannot survive
            fd = child_end.fileno()
            package_parent = str(Path(__file__).resolve().parents[2])
            path = [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]
            code = f"from tasks.train.local import exec_main; exec_main({fd}, {os.getpid()})"
            self.process = _Exec(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
                )
            )
            self._conn.send((dump, threads))
        child_end.close()
        self.prepared: dict[str, Any] | None = None
        self.finished = False

    def _next(self) -> tuple[Any, ...]:
        """The next message; the child's error re-raised; a child gone silent is an error."""
        try:
            msg: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(GRACE_S)
            raise TrainProcessError(
                f"the training process ({self.method}, pid {self.process.pid}) ended with exit "
                f"code {self.process.exitcode} before it finished; its output is above"
            ) from None
        if msg[0] == "error":
            raise_child_error(*msg[1:])
        return msg

    def wait_prepared(self) -> dict[str, Any]:
        """The child checked the inputs and prepared the run folder: what it found."""
        msg = self._next()
        if msg[0] != "prepared":
            raise TrainProcessError(f"training process: expected 'prepared', got {msg[0]!r}")
        self.prepared = dict(msg[1])
        return self.prepared

    def wait_done(
        self, log_step: Callable[[int, dict[str, float], int], None], flush: Callable[[], None]
    ) -> float:
        """Relay the logged steps until training ends; the seconds train_worker took."""
        while True:
            msg = self._next()
            if msg[0] == "step":
                log_step(int(msg[1]), dict(msg[2]), int(msg[3]))
            elif msg[0] == "flush":
                flush()
            elif msg[0] == "done":
                flush()
                self.finished = True
                return float(msg[1])
            else:
                raise TrainProcessError(f"training process: unexpected message {msg[0]!r}")

    def close(self) -> None:
        """No child outlives the stage: a finished one is waited for, a running one terminated
        (SIGTERM, then SIGKILL after GRACE_S). Safe to call more than once."""
        proc = self.process
        if proc.exitcode is None and self.finished:
            proc.join(GRACE_S)  # it exits right after "done"
        if proc.exitcode is None:
            proc.terminate()
            proc.join(GRACE_S)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        self._conn.close()


def raise_child_error(payload: bytes | None, kind: str, message: str, text: str) -> None:
    """Re-raise the child's exception here: the same type and message when it unpickles, else a
    TrainProcessError naming its type (also for SystemExit: the child was terminated, which
    must not exit the parent as if it were its own); the child's traceback is the cause."""
    exc: BaseException | None = None
    if payload is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(payload)
    if not isinstance(exc, Exception):  # unreadable, or SystemExit / KeyboardInterrupt: a signal
        exc = TrainProcessError(f"training process failed: {kind}: {message}")
    raise exc from ChildTraceback(text)


def _die_with_parent(parent_pid: int) -> None:
    """The child must not outlive a parent killed without cleanup (SIGKILL, OOM)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    else:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="clipmill-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _exception_message(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """What the parent needs to re-raise `exc`: its pickle when it round-trips, else None."""
    payload: bytes | None = None
    with contextlib.suppress(Exception):
        data = pickle.dumps(exc)
        back = pickle.loads(data)
        if type(back) is type(exc) and str(back) == str(exc):
            payload = data
    return payload, type(exc).__name__, str(exc), traceback.format_exc()


def exec_main(fd: int, parent_pid: int) -> None:
    """The exec'd training process's entry: its params come first over the pipe."""
    conn = Connection(fd)
    params, threads = conn.recv()
    child_main(conn, params, parent_pid, threads)


def child_main(conn: Connection, params: dict[str, Any], parent_pid: int, threads: int) -> None:
    """The training process: preflight, run folder, train_worker; every outcome reported.
    `threads`: torch's intra-op threads (0: torch's default)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    code = 0
    try:
        from tasks.train.stage import prepare
        from tasks.train.worker import train_worker

        if threads:
            import torch

            torch.set_num_threads(threads)

        prepared = prepare(TrainParams.model_validate(params))
        conn.send(("prepared", prepared.report()))
        config = {**prepared.config, "step_sink": conn.send}
        started = time.perf_counter()
        train_worker(config)
        conn.send(("done", time.perf_counter() - started))
    except BaseException as exc:  # every failure reaches the parent, SystemExit included
        code = 1
        with contextlib.suppress(Exception):  # the parent may be gone
            conn.send(("error", *_exception_message(exc)))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
            conn.close()
        os._exit(code)  # no interpreter teardown of torch & co: every result is written
