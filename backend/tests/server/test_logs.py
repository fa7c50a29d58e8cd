"""The JSON log line: one parsable object per record, whatever text the record carries."""

import json
import logging

from todo_api.logs import JsonFormatter, request_id_var


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("todo_api.access", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_object_with_the_promised_fields() -> None:
    token = request_id_var.set("req-1")
    try:
        line = JsonFormatter().format(
            _record("GET /x 200", method="GET", route="/x", status=200, duration_ms=1.5)
        )
    finally:
        request_id_var.reset(token)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "GET /x 200"
    assert entry["level"] == "info"
    assert entry["request_id"] == "req-1"
    assert (entry["method"], entry["route"], entry["status"], entry["duration_ms"]) == (
        "GET",
        "/x",
        200,
        1.5,
    )
    assert entry["time"].endswith("Z")


def test_non_ascii_text_is_kept_as_is() -> None:
    entry = json.loads(JsonFormatter().format(_record("tâche ✓")))
    assert entry["message"] == "tâche ✓"


def test_a_lone_surrogate_still_gives_a_parsable_line() -> None:
    line = JsonFormatter().format(_record("bad \udc80 text"))
    line.encode("utf-8")  # writable to a UTF-8 stream
    assert json.loads(line)["message"] == "bad \udc80 text"


def test_values_json_cannot_hold_are_written_as_text() -> None:
    entry = json.loads(JsonFormatter().format(_record("x", status=object())))
    assert entry["status"].startswith("<object")
