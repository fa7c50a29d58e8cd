"""Logging: one JSON object (or text line) per record on stdout, with the request id.

Kept apart from the metrics module: Gunicorn's config imports this before prometheus_client
may be imported (PROMETHEUS_MULTIPROC_DIR must be set first).
"""

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Hand-written: it is a dozen lines with the exact fields we
    promise (time, level, message, request id, method, route, status, duration), no more."""

    _EXTRA = ("method", "route", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key in self._EXTRA:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            # orjson refuses lone surrogates, which a message can carry from request input.
            return json.dumps(entry, default=str)


JsonFormatter.converter = time.gmtime


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_var.get() or "-"
        return super().format(record)


def skip_unused_record_fields() -> None:
    """Stop the logging module from computing what our formats never show.

    By default every record walks the stack for its file and line and looks up its thread and
    multiprocessing names: about a third of the cost of the per-request access line. These are
    the switches the logging documentation gives for this ("Optimization").
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A dictConfig for the app, Uvicorn and Gunicorn: everything to stdout in one format."""
    formatter = "todo_api.logs.JsonFormatter"
    if log_format == "text":
        formatter = "todo_api.logs.TextFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stdout"}
    quiet = {"level": level.upper(), "handlers": ["stdout"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": formatter}},
        "handlers": {"stdout": handler},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": quiet,
            "gunicorn.access": {**quiet, "level": "WARNING"},
            "uvicorn.error": quiet,
            "uvicorn.access": {**quiet, "level": "WARNING"},
            "alembic.runtime.plugins": {**quiet, "level": "WARNING"},
        },
    }
