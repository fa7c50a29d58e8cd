"""`todo-api dev` as a developer starts it, for the CLI and README tests: a real process."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import missing

BIN = Path(sys.executable).parent


def environment(**values: str) -> dict[str, str]:
    """Only what the command needs: nothing from the developer's shell leaks in."""
    return {"PATH": f"{BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", **values}


def wait_until_answers(process: subprocess.Popen[str], url: str) -> None:
    """Until `url` answers 200 (at most 60 s), failing at once if the process exits."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.2)


def start_dev(env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[str]:
    """`todo-api dev --port PORT`, once it serves /readyz (its database answers)."""
    process = subprocess.Popen(
        [str(BIN / "todo-api"), "dev", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_answers(process, f"http://127.0.0.1:{port}/readyz")
    return process


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then its output (SIGKILL if it has not exited within 30 s)."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def require(tool: str, what: str) -> str:
    """The path of `tool`; without it the test skips loudly, or fails under CI."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{what}: `{tool}` is not installed")
    return path
