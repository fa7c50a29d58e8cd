"""Better Auth's public keys (its JWKS endpoint), cached and refetched at a bounded rate."""

import json
import math
import threading
import time
import urllib.request

import jwt


class JwksUnavailable(Exception):
    """The JWKS endpoint cannot be reached and no cached key fits the token."""


class JwksKeys:
    """Better Auth's public keys: fetched lazily, cached, refetched at most once per interval.

    PyJWKClient would refetch on every unknown `kid`, which lets forged tokens drive a fetch storm,
    and it forgets its keys when a refetch fails; this keeps the last good set and rate-limits.
    After a successful fetch the next one waits `min_refresh` seconds (a forged `kid` cannot
    cause more); after a failed one it waits only `retry` seconds, however many failed before,
    so that the keys are back within `retry` seconds of the JWKS whatever the outage was like.
    (A backoff that grew with each failure made a long outage a slow recovery.)
    """

    def __init__(
        self, url: str, *, ttl: float, min_refresh: float, timeout: float, retry: float = 2.0
    ) -> None:
        self._url = url
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._retry = min(retry, min_refresh)
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._next_attempt_at = -math.inf
        self._last_fetch_failed = False

    def peek(self, kid: str) -> jwt.PyJWK | None:
        """A cached, still fresh key, without blocking (safe on the event loop)."""
        if time.monotonic() - self._fetched_at < self._ttl:
            return self._keys.get(kid)
        return None

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, fetching the set if needed (blocking: call from a thread); None
        when the set is known and has no such key."""
        stale = self._keys.get(kid)
        if stale is not None and not self._lock.acquire(blocking=False):
            # Another thread is refetching: the key we have serves meanwhile, so a slow or
            # unreachable JWKS never holds up requests whose key is already known.
            return stale
        if stale is None:
            self._lock.acquire()
        try:
            return self._get_locked(kid)
        finally:
            self._lock.release()

    def _get_locked(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        fresh = now - self._fetched_at < self._ttl
        if not (fresh and kid in self._keys) and now >= self._next_attempt_at:
            try:
                self._keys = self._fetch()
            except JwksUnavailable:
                self._last_fetch_failed = True
                # From the end of the attempt: a fetch that timed out must not be retried at once.
                self._next_attempt_at = time.monotonic() + self._retry
            else:
                self._fetched_at = now
                self._last_fetch_failed = False
                self._next_attempt_at = now + self._min_refresh
        key = self._keys.get(kid)
        if key is None and self._last_fetch_failed:
            raise JwksUnavailable(self._url)
        return key

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                document = json.loads(response.read(1024 * 1024))
            if not isinstance(document, dict):
                raise ValueError("the JWKS is not a JSON object")
            keyset = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, TypeError, AttributeError, jwt.PyJWTError) as error:
            raise JwksUnavailable(str(error)) from error
        return {key.key_id: key for key in keyset.keys if key.key_id}
