"""Schemathesis hooks for tests/test_contract.py (loaded through SCHEMATHESIS_HOOKS).

An Idempotency-Key is valid by its form, but a key reused with another request is refused (422)
by design, and a fuzzer draws the same few keys again and again with other bodies. So every
request schemathesis means to be valid gets a key of its own; malformed keys are sent as drawn.
"""

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
    if positive and case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
