"""Debian's `prometheus` and `promtool` for the tests: found (or skipped loudly, or failed under
CI), a server started on a free port with a temporary config and storage, queried over its HTTP
API, and stopped by its PID."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import free_port, missing, stop_process


def require(name: str) -> str:
    """The path of a Prometheus binary. Missing: a loud skip locally, a failure when CI=true."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if path:
        return path
    missing(f"{name} is not installed (Debian's `prometheus` package; .ci/run installs it)")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30)

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """An HTTP API call's `data`; a query that does not parse fails here with the reason."""
        body = self.client.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        data: dict[str, Any] = body["data"]
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=start, end=end, step=step
        )["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 20) -> list[dict[str, Any]]:
        """The query's result once it is not empty (a scrape or a rule evaluation away)."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)):
            assert time.monotonic() < deadline, f"no series for {expr} after {timeout} s"
            time.sleep(0.2)
        return result


@contextmanager
def running_prometheus(config: dict[str, Any], directory: Path) -> Iterator[Prometheus]:
    """A Prometheus server with `config`, its storage under `directory`, on 127.0.0.1."""
    binary = require("prometheus")
    port = free_port()
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if prometheus.client.get("/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready: " + log.read_text()
            time.sleep(0.1)
        yield prometheus
    finally:
        prometheus.client.close()
        stop_process(process)
