"""The drain before a stop: on SIGTERM `todo-api serve` first reports not ready (/readyz 503)
and keeps accepting and serving for SHUTDOWN_DRAIN_SECONDS, so that a load balancer's health
check (or Kubernetes' endpoint removal) takes the instance out of rotation while it still
answers; only then does Gunicorn close its listeners and stop its workers gracefully.

Gunicorn's own arbiter closes the listeners as soon as SIGTERM arrives, so the drain lives in
the master: a small Arbiter subclass. The workers learn that the master drains through a flag
file that only /readyz looks at (one stat per probe, nothing on other routes).

Every Gunicorn internal this relies on is named in this module (tests/deploy/test_release.py fails
loudly when an upgrade changes one): Arbiter.handle_term, Arbiter.manage_workers (called by the
main loop after every wake-up) and Arbiter.wakeup.
"""

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gunicorn.arbiter import Arbiter

# Set by the master before it forks; a process without it (todo-api dev, the tests' in-process
# app) never drains, and its /readyz never stats anything.
FLAG_VARIABLE = "TODO_API_DRAIN_FLAG"
_flag = os.environ.get(FLAG_VARIABLE)


def draining() -> bool:
    """True in a worker whose master has received SIGTERM and is draining."""
    return _flag is not None and os.path.exists(_flag)


@contextmanager
def drain_flag() -> Iterator[Path]:
    """A private path for the flag, handed to the workers through the environment, and removed
    (with its directory) when the server exits."""
    # tmpfs where there is one, like Gunicorn's worker heartbeat files.
    shm = Path("/dev/shm")  # noqa: S108
    directory = Path(tempfile.mkdtemp(prefix="todo-api-drain-", dir=shm if shm.is_dir() else None))
    flag = directory / "draining"
    # The workers are forked from this process (this module already imported) or, after a
    # reload, import it again: both ways they find the path.
    global _flag
    _flag = os.environ[FLAG_VARIABLE] = str(flag)
    master = os.getpid()
    try:
        yield flag
    finally:
        # Workers are forked inside the arbiter and leave through here too: only the master
        # removes the flag, or a recycled worker would take it from its siblings.
        if os.getpid() == master:
            shutil.rmtree(directory, ignore_errors=True)


class DrainingArbiter(Arbiter):  # type: ignore[misc]
    """Gunicorn's arbiter, with a drain between the first SIGTERM and the graceful stop.

    A second SIGTERM during the drain stops at once (gracefully, within GRACEFUL_TIMEOUT);
    SIGINT and SIGQUIT keep Gunicorn's quick shutdown. A drain of 0 is Gunicorn's own behaviour.
    """

    def __init__(self, app: Any, *, flag: Path, drain_seconds: float) -> None:
        super().__init__(app)
        self.drain_flag = flag
        self.drain_seconds = drain_seconds
        self.drain_deadline: float | None = None

    def handle_term(self) -> None:
        if self.drain_seconds <= 0 or self.drain_deadline is not None:
            raise StopIteration
        self.drain_flag.touch()
        self.drain_deadline = time.monotonic() + self.drain_seconds
        self.log.info(
            "Draining for %gs: /readyz answers 503 and requests are still served "
            "(SIGTERM again, or Ctrl-C, to stop now)",
            self.drain_seconds,
        )
        # The main loop sleeps up to a second between wake-ups: end the drain on time.
        timer = threading.Timer(self.drain_seconds, self.wakeup)
        timer.daemon = True
        timer.start()

    def manage_workers(self) -> None:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.log.info("Drain over: closing the listeners and stopping the workers")
            raise StopIteration  # the main loop's way to a graceful halt
        super().manage_workers()


def serve(app: Any, *, drain_seconds: float) -> None:
    """Run `app` (a Gunicorn Application) under the draining arbiter until it exits.

    Gunicorn's Application.run would construct its own Arbiter; what it does besides (print or
    check the config, daemonize, spew, add python paths) is never asked of `todo-api serve`.
    """
    with drain_flag() as flag:
        try:
            DrainingArbiter(app, flag=flag, drain_seconds=drain_seconds).run()
        except RuntimeError as error:  # as Gunicorn's BaseApplication.run reports it
            print(f"\nError: {error}\n", file=sys.stderr, flush=True)
            sys.exit(1)
