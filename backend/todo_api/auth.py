"""Bearer token -> verified claims.

Two kinds of token are accepted, each only with its own keys (no key confusion):
HS256 with BETTER_AUTH_SECRET, and asymmetric tokens (EdDSA, ES256, ES512, RS256, PS256)
with the keys Better Auth publishes at its JWKS endpoint.
"""

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
import jwt
from fastapi import HTTPException, Path, Request, status
from fastapi.security import HTTPBearer

from todo_api.config import Settings
from todo_api.jwks import JwksKeys, JwksUnavailable
from todo_api.state import app_state

log = logging.getLogger("todo_api.auth")
_jwks_threads = anyio.CapacityLimiter(4)
ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "ES256", "ES512", "RS256", "PS256"})
USER_ID_MAX = 255
# Better Auth's jwt plugin can sign its session-cache cookies with the same keys as its API
# tokens (`sessionCookieCache: true`): those carry this `typ` header and this audience, and the
# session token as `sid`. A cookie is not a bearer token, wherever it was copied from.
SESSION_CACHE_TYPE = "better-auth.session-cache+jwt"
SESSION_CACHE_AUDIENCE = "better-auth:session-cache"
# Explicit typing (RFC 8725 §3.11): Better Auth signs other JWTs with the same keys, each with a
# `typ` of its own (`logout+jwt`, ...). An access token has no `typ`, `JWT`, or `at+jwt` (RFC
# 9068); a `typ` is a media type, so compared case-insensitively and with the `application/`
# prefix optional (RFC 7515 §4.1.9).
ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})
# A NumericDate (RFC 7519 §2) is a JSON number of seconds. PyJWT checks `exp`, `nbf` and `iat`
# through int(), which takes true, "123" and 10**400 (that one then overflows a float): each
# is checked again here, and a time before 1970 or after the year 9999 is no token's.
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
LATEST_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    exp: float
    email: str | None = None
    name: str | None = None
    email_verified: bool = False
    image: str | None = None


class AuthError(Exception):
    """A token that is refused; `reason` is a short stable label (used by metrics)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.better_auth_secret.encode() if settings.better_auth_secret else None
        self._leeway = settings.jwt_leeway_seconds
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._jwks_issuer = settings.jwks_issuer
        self._jwks_audience = settings.jwks_audience
        # A token, once verified, is the same string until it expires: a client sends it with
        # every request, so the signature check (the largest CPU cost per request) runs once.
        # Only successes are cached, keyed by the whole token; event-loop use only (no lock).
        self._verified: dict[str, Claims] = {}
        self._cache_size = settings.jwt_cache_size
        url = settings.jwks_url
        if url and not (self._jwks_issuer and self._jwks_audience):
            log.warning(
                "JWKS tokens are accepted without an issuer or audience check: set "
                "BETTER_AUTH_URL, or JWT_ISSUER and JWT_AUDIENCE"
            )
        self.jwks = (
            JwksKeys(
                url,
                ttl=settings.jwks_cache_seconds,
                min_refresh=settings.jwks_min_refresh_seconds,
                timeout=settings.jwks_timeout_seconds,
            )
            if url
            else None
        )

    async def verify(self, token: str) -> Claims:
        """The token's claims, from the cache while it is unexpired, else verified in full."""
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() <= claims.exp + self._leeway:
                return claims
            del self._verified[token]
        claims = await self._verify(token)
        if self._cache_size:
            if len(self._verified) >= self._cache_size:
                # Evict the oldest entry (dicts keep insertion order): bounded, no LRU needed.
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = claims
        return claims

    async def _verify(self, token: str) -> Claims:
        alg, kid = _unverified_header(token)
        if alg == "HS256" and self._secret is not None:
            return self._decode(token, self._secret, alg, self._issuer, self._audience)
        if alg in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            if kid is None:
                raise AuthError("malformed", "Token has no key id")
            key = self.jwks.peek(kid)
            if key is None:
                # Its own threads: a JWKS fetch must not take a database request's thread.
                key = await anyio.to_thread.run_sync(self.jwks.get, kid, limiter=_jwks_threads)
            if key is None:
                raise AuthError("unknown_key", "Token signing key is not known")
            if key.algorithm_name != alg:
                raise AuthError("bad_algorithm", "Token algorithm does not match its key")
            return self._decode(token, key, alg, self._jwks_issuer, self._jwks_audience)
        raise AuthError("bad_algorithm", "Token algorithm is not accepted")

    def _decode(
        self, token: str, key: Any, alg: str, issuer: str | None, audience: str | None
    ) -> Claims:
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=issuer,
                audience=audience,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "Token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "Token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "Token signature is invalid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong_issuer", "Token issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            # Raised after the signature check: the claims read here are the signed ones.
            claims = jwt.decode(token, options={"verify_signature": False})
            if _is_session_cache_audience(claims.get("aud")):
                raise _session_cache_error() from None
            raise AuthError("wrong_audience", "Token audience is not accepted") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError("missing_claim", f"Token has no '{error.claim}' claim") from None
        except jwt.PyJWTError:
            raise AuthError("malformed", "Token is malformed") from None
        # Where no audience is pinned, PyJWT does not look at `aud`: refuse a session cache here.
        if _is_session_cache_audience(payload.get("aud")):
            raise _session_cache_error()
        return _claims(payload)


def _unverified_header(token: str) -> tuple[str, str | None]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed", "Token is malformed") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise AuthError("malformed", "Token is malformed")
    if "typ" in header:
        _check_type(header["typ"])
    return alg, kid if isinstance(kid, str) else None


def _check_type(typ: object) -> None:
    """Explicit typing (RFC 8725 §3.11): only an access token's `typ` is accepted."""
    media_type = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
    if media_type in ACCESS_TOKEN_TYPES:
        return
    if media_type == SESSION_CACHE_TYPE:
        raise _session_cache_error()
    raise AuthError("wrong_type", "Token type is not an access token's: expected JWT or at+jwt")


def _is_session_cache_audience(aud: object) -> bool:
    if isinstance(aud, list):
        return SESSION_CACHE_AUDIENCE in aud
    return aud == SESSION_CACHE_AUDIENCE


def _session_cache_error() -> AuthError:
    return AuthError(
        "session_cache",
        "Token is a Better Auth session-cache cookie, not an API token: send a token from "
        "/api/auth/token instead",
    )


def _claims(payload: dict[str, Any]) -> Claims:
    for name in NUMERIC_DATE_CLAIMS:
        if name in payload:
            value = payload[name]
            # type(), not isinstance(): a bool is an int to Python, not a number to JSON.
            # NaN fails both comparisons; infinities fail one.
            if type(value) not in (int, float) or not 0 <= value <= LATEST_NUMERIC_DATE:
                raise AuthError("malformed", f"Token '{name}' claim is not a valid time")
    sub = payload["sub"]
    # A user id becomes a path segment: "/", "." and ".." could never address their own tasks.
    if (
        not isinstance(sub, str)
        or not 0 < len(sub) <= USER_ID_MAX
        or not sub.isprintable()
        or "/" in sub
        or sub in {".", ".."}
    ):
        raise AuthError("bad_subject", "Token subject is not a valid user id")

    def text(name: str) -> str | None:
        value = payload.get(name)
        return value if isinstance(value, str) and value.isprintable() else None

    return Claims(
        sub=sub,
        exp=float(payload["exp"]),
        email=text("email"),
        name=text("name"),
        email_verified=payload.get("emailVerified") is True
        or payload.get("email_verified") is True,
        image=text("image"),
    )


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


class PathUser(HTTPBearer):
    """The verified claims of the request's bearer token, when its subject is the path's user.

    401 without a valid token (503 if the JWKS is down), 403 for another user's path. Written
    as one dependency, not three chained ones (bearer -> token -> path user): FastAPI pays a
    fixed cost for each dependency it solves, and this one runs on every request. Being an
    HTTPBearer, it still declares the bearer scheme in the OpenAPI document.
    """

    async def __call__(  # type: ignore[override]
        self,
        request: Request,
        # No length bound here: FastAPI would check it before the token (a 422 before the 401);
        # a token's subject is at most USER_ID_MAX characters, so a longer id is a plain 403.
        user_id: Annotated[str, Path(description="The signed-in user's id (the token's sub)")],
    ) -> Claims:
        credentials = await super().__call__(request)
        state = app_state(request)
        on_failure = state.on_auth_failure
        if credentials is None:
            on_failure("missing")
            raise unauthorized("Not authenticated")
        verifier = state.verifier
        try:
            claims = await verifier.verify(credentials.credentials)
        except AuthError as error:
            on_failure(error.reason)
            raise unauthorized(error.detail) from None
        except JwksUnavailable:
            on_failure("jwks_unavailable")
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "Token keys are unavailable; try again shortly",
                headers={"Retry-After": "5"},
            ) from None
        if claims.sub != user_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Token does not belong to this user")
        return claims


path_user = PathUser(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="HTTPBearer",  # the name the OpenAPI document has always used
    description="A Better Auth JWT (EdDSA/ES256/RS256 via JWKS, or HS256 with the shared secret)",
)
