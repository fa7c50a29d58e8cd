"""Gunicorn settings from the environment: `gunicorn -c python:todo_api.gunicorn_conf ...`.

This file runs in the master before any worker exists; it opens no database connection.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

from todo_api.config import ServerSettings
from todo_api.logs import logging_config, skip_unused_record_fields

_settings = ServerSettings()

# Prometheus multiprocess mode: every worker writes its samples under this directory and
# /metrics sums them. It must be in the environment before prometheus_client is imported.
_metrics_dir = _settings.prometheus_multiproc_dir or tempfile.mkdtemp(prefix="todo-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

bind = [_settings.bind]
workers = _settings.web_concurrency
worker_class = "todo_api.worker.Worker"
timeout = _settings.gunicorn_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
forwarded_allow_ips = _settings.forwarded_allow_ips
# The heartbeat file on tmpfs: a disk-backed /tmp can stall workers into timeouts.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108
control_socket_disable = True
preload_app = False
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = logging_config(_settings.log_format, _settings.log_level)
skip_unused_record_fields()


def on_starting(server: Any) -> None:
    """Start from an empty metrics directory: samples of a previous run must not be summed."""
    directory = Path(_metrics_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's sample files: a directory named by mistake loses nothing else.
    for samples in directory.glob("*.db"):
        samples.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
