"""Token verification: the attack list for HS256 and for EdDSA through a JWKS served here."""

import base64
import contextlib
import hashlib
import hmac
import json
import math
import time

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from tests.support import (
    SECRET,
    JwksServer,
    SigningKey,
    bearer,
    hs256,
    jti,
    running_app,
    settings_for,
)
from todo_api.config import Settings

URL = "/api/alice/tasks"


def _part(value: dict | bytes) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(payload: dict) -> str:
    """A token with alg none (what PyJWT refuses to produce with a key)."""
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(payload)}."


def hmac_signed(secret: bytes, payload: dict, header: dict) -> str:
    """An HS256 token signed by hand, with secrets PyJWT itself refuses to use."""
    signing_input = f"{_part({'alg': 'HS256', **header})}.{_part(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_part(signature)}"


def assert_401(response, detail_fragment: str = "") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert detail_fragment.lower() in response.json()["detail"].lower()


class TestMissingOrMalformed:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic YWxpY2U6cHc="},
            {"Authorization": "Bearer not-a-jwt"},
            {"Authorization": "Bearer a.b.c"},
            {"Authorization": "Bearer " + "x" * 5000},
        ],
    )
    def test_is_401_with_www_authenticate(self, api, headers):
        assert_401(api.get(URL, headers=headers))

    def test_post_without_token_is_401_and_creates_nothing(self, api, engine):
        assert_401(api.post(URL, json={"title": "x"}))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar() == 0


class TestHS256:
    def test_valid_token_is_accepted(self, api):
        assert api.get(URL, headers=bearer(hs256("alice"))).status_code == 200

    def test_expired(self, api):
        assert_401(api.get(URL, headers=bearer(hs256(exp=int(time.time()) - 60))), "expired")

    def test_expiry_within_the_30s_leeway_is_accepted(self, api):
        token = hs256(exp=int(time.time()) - 10)
        assert api.get(URL, headers=bearer(token)).status_code == 200

    def test_not_yet_valid(self, api):
        token = hs256(nbf=int(time.time()) + 600)
        assert_401(api.get(URL, headers=bearer(token)), "not valid yet")

    def test_issued_in_the_future(self, api):
        token = hs256(iat=int(time.time()) + 600)
        assert_401(api.get(URL, headers=bearer(token)))

    def test_wrong_secret(self, api):
        token = hs256(secret="another-secret-" + "y" * 60)
        assert_401(api.get(URL, headers=bearer(token)), "signature")

    def test_tampered_payload(self, api):
        header, _, signature = hs256("alice").split(".")
        forged = base64.urlsafe_b64encode(
            json.dumps({"sub": "alice", "exp": int(time.time()) + 999999}).encode()
        )
        token = f"{header}.{forged.rstrip(b'=').decode()}.{signature}"
        assert_401(api.get(URL, headers=bearer(token)))

    def test_alg_none(self, api):
        token = unsigned({"sub": "alice", "exp": int(time.time()) + 600})
        assert_401(api.get(URL, headers=bearer(token)), "algorithm")

    def test_missing_sub(self, api):
        assert_401(api.get(URL, headers=bearer(hs256(None))), "sub")

    def test_missing_exp(self, api):
        token = jwt.encode({"sub": "alice"}, SECRET.encode(), algorithm="HS256")
        assert_401(api.get(URL, headers=bearer(token)), "exp")

    @pytest.mark.parametrize("sub", ["", "a\x00b", "x" * 256, 42])
    def test_unusable_sub(self, api, sub):
        token = jwt.encode(
            {"sub": sub, "exp": int(time.time()) + 60}, SECRET.encode(), algorithm="HS256"
        )
        assert_401(api.get(URL, headers=bearer(token)))

    @pytest.mark.parametrize("alg", ["HS384", "HS512"])
    def test_other_hmac_algorithms_are_refused(self, api, alg):
        token = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60}, SECRET.encode(), algorithm=alg
        )
        assert_401(api.get(URL, headers=bearer(token)), "algorithm")

    def test_aud_in_token_is_fine_when_no_audience_is_configured(self, api):
        token = hs256("alice", aud="somewhere", iss="someone")
        assert api.get(URL, headers=bearer(token)).status_code == 200


@pytest.fixture(scope="module")
def strict(sqlite_url):
    """An app that requires an issuer and audience on HS256 tokens too."""
    settings = settings_for(
        sqlite_url, jwt_issuer="https://auth.example", jwt_audience="https://auth.example"
    )
    with running_app(settings) as client:
        yield client


class TestHS256IssuerAudience:
    def test_matching_issuer_and_audience(self, strict):
        token = hs256(iss="https://auth.example", aud="https://auth.example")
        assert strict.get(URL, headers=bearer(token)).status_code == 200

    def test_wrong_issuer(self, strict):
        token = hs256(iss="https://evil.example", aud="https://auth.example")
        assert_401(strict.get(URL, headers=bearer(token)), "issuer")

    def test_wrong_audience(self, strict):
        token = hs256(iss="https://auth.example", aud="https://evil.example")
        assert_401(strict.get(URL, headers=bearer(token)), "audience")

    def test_missing_issuer(self, strict):
        assert_401(strict.get(URL, headers=bearer(hs256(aud="https://auth.example"))), "iss")


class TestJwks:
    def test_valid_eddsa_token_is_accepted(self, api, jwks):
        response = api.post(URL, json={"title": "via jwks"}, headers=bearer(jwks.sign("alice")))
        assert response.status_code == 201

    def test_expired(self, api, jwks):
        token = jwks.sign(exp=int(time.time()) - 60)
        assert_401(api.get(URL, headers=bearer(token)), "expired")

    def test_not_yet_valid(self, api, jwks):
        assert_401(api.get(URL, headers=bearer(jwks.sign(nbf=int(time.time()) + 600))))

    def test_signed_by_an_unknown_key_with_a_known_kid(self, api, jwks):
        impostor = SigningKey(kid=jwks.keys[0].kid)
        token = impostor.sign("alice", jwks.base_url)
        assert_401(api.get(URL, headers=bearer(token)), "signature")

    def test_unknown_kid(self, api, jwks):
        token = SigningKey(kid="nobody").sign("alice", jwks.base_url)
        assert_401(api.get(URL, headers=bearer(token)), "key")

    def test_wrong_issuer(self, api, jwks):
        assert_401(api.get(URL, headers=bearer(jwks.sign(iss="https://evil.example"))), "issuer")

    def test_wrong_audience(self, api, jwks):
        token = jwks.sign(aud="https://evil.example")
        assert_401(api.get(URL, headers=bearer(token)), "audience")

    def test_missing_sub(self, api, jwks):
        assert_401(api.get(URL, headers=bearer(jwks.sign(None))), "sub")

    def test_alg_none_with_a_known_kid(self, api, jwks):
        token = unsigned({"sub": "alice", "exp": int(time.time()) + 60})
        assert_401(api.get(URL, headers=bearer(token)), "algorithm")

    def test_hs256_signed_with_the_public_key_is_refused(self, api, jwks):
        # The classic key-confusion attack: an HMAC token whose "secret" is the public key.
        public = (
            jwks.keys[0]
            .private.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        for secret in (public, json.dumps(jwks.keys[0].jwk()).encode()):
            payload = {"sub": "alice", "exp": int(time.time()) + 60}
            token = hmac_signed(secret, payload, {"kid": "key-1"})
            assert_401(api.get(URL, headers=bearer(token)), "signature")

    def test_eddsa_header_on_an_hmac_token_is_refused(self, api, jwks):
        _, payload, signature = hs256("alice").split(".")
        eddsa_header = base64.urlsafe_b64encode(
            json.dumps({"alg": "EdDSA", "kid": "key-1"}).encode()
        ).rstrip(b"=")
        token = f"{eddsa_header.decode()}.{payload}.{signature}"
        assert_401(api.get(URL, headers=bearer(token)))

    def test_rotated_key_is_fetched_on_first_use(self, api, jwks):
        rotated = SigningKey(kid="key-rotated")
        jwks.keys.append(rotated)
        try:
            token = rotated.sign("alice", jwks.base_url)
            assert api.get(URL, headers=bearer(token)).status_code == 200
        finally:
            jwks.keys.remove(rotated)

    def test_jwks_down_with_no_cached_key_is_503_not_401(self, api, jwks):
        jwks.up = False
        token = SigningKey(kid="never-seen").sign("alice", jwks.base_url)
        response = api.get(URL, headers=bearer(token))
        assert response.status_code == 503
        assert "unavailable" in response.json()["detail"]

    def test_jwks_down_still_accepts_a_cached_key(self, api, jwks):
        assert api.get(URL, headers=bearer(jwks.sign("alice"))).status_code == 200
        jwks.up = False
        assert api.get(URL, headers=bearer(jwks.sign("alice"))).status_code == 200


@contextlib.contextmanager
def app_on_jwks(database_url, jwks, *, min_refresh_seconds):
    """The app verifying tokens against `jwks`, fetching it at most once per interval."""
    settings = settings_for(
        database_url, better_auth_url=jwks.base_url, jwks_min_refresh_seconds=min_refresh_seconds
    )
    with running_app(settings) as client:
        yield client


class TestJwksRefetchLimit:
    """Forged kids must not drive one JWKS fetch each (a fetch storm against Better Auth)."""

    @pytest.fixture
    def limited(self, sqlite_url, jwks):
        # The session's JWKS as the `api` fixture leaves it: an earlier test may have stopped it.
        jwks.up, jwks.document = True, None
        with app_on_jwks(sqlite_url, jwks, min_refresh_seconds=3600) as client:
            yield client

    def test_unknown_kids_cause_at_most_one_fetch(self, limited, jwks):
        assert limited.get(URL, headers=bearer(jwks.sign("alice"))).status_code == 200
        before = jwks.fetches
        for i in range(20):
            token = SigningKey(kid=f"forged-{i}").sign("alice", jwks.base_url)
            assert_401(limited.get(URL, headers=bearer(token)), "key")
        assert jwks.fetches == before


class TestForbidden:
    def test_other_users_path_is_403_before_any_database_work(self, api, engine):
        response = api.post("/api/bob/tasks", json={"title": "x"}, headers=bearer(hs256("alice")))
        assert response.status_code == 403
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM users")).scalar() == 0

    def test_a_path_user_id_longer_than_any_subject_is_401_then_403(self, api):
        url = "/api/" + "a" * 300 + "/tasks"
        assert_401(api.get(url))
        assert api.get(url, headers=bearer(hs256("alice"))).status_code == 403

    def test_jwks_token_for_another_user_is_403(self, api, jwks):
        response = api.get("/api/bob/tasks", headers=bearer(jwks.sign("alice")))
        assert response.status_code == 403


class TestJwksDocument:
    @pytest.mark.parametrize("document", [[], 42, "keys", {"keys": "nope"}, {"keys": []}])
    def test_a_jwks_that_is_not_a_key_set_is_503(self, api, jwks, document):
        jwks.document = document
        token = SigningKey(kid="not-cached").sign("alice", jwks.base_url)
        response = api.get(URL, headers=bearer(token))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"


@pytest.fixture(scope="module")
def no_leeway(sqlite_url):
    """An app that allows no clock skew, so that expiry can be waited for."""
    with running_app(settings_for(sqlite_url, jwt_leeway_seconds=0)) as client:
        yield client


class TestVerifiedTokenCache:
    @pytest.mark.slow  # seconds of waiting (outside `make test-fast`)
    def test_a_cached_token_is_refused_once_it_expires(self, no_leeway):
        token = hs256(exp=int(time.time()) + 2)
        assert no_leeway.get(URL, headers=bearer(token)).status_code == 200
        assert no_leeway.get(URL, headers=bearer(token)).status_code == 200
        time.sleep(3.1)
        assert_401(no_leeway.get(URL, headers=bearer(token)), "expired")

    def test_the_cache_can_be_turned_off(self, sqlite_url):
        with running_app(settings_for(sqlite_url, jwt_cache_size=0)) as client:
            token = hs256()
            for _ in range(3):
                assert client.get(URL, headers=bearer(token)).status_code == 200
            assert_401(client.get(URL, headers=bearer(hs256(exp=int(time.time()) - 60))))

    def test_a_refused_token_is_not_remembered_as_good(self, api):
        token = hs256(nbf=int(time.time()) + 600)
        for _ in range(2):
            assert_401(api.get(URL, headers=bearer(token)))


@pytest.mark.parametrize("sub", ["a/b", ".", ".."])
def test_subjects_that_cannot_be_a_path_segment_are_refused(api, sub):
    assert_401(api.get(URL, headers=bearer(hs256(sub))), "subject")


@pytest.fixture
def own_jwks():
    """A JWKS server of the test's own, so that taking it down disturbs no other test."""
    server = JwksServer()
    yield server
    server.close()


def wait_for_status(client, token: str, status: int, *, within: float) -> float:
    """Seconds until `GET URL` with `token` answers `status`; fails after `within` seconds."""
    started = time.monotonic()
    while (code := client.get(URL, headers=bearer(token)).status_code) != status:
        assert time.monotonic() - started < within, f"still {code} after {within} s"
        time.sleep(0.1)
    return time.monotonic() - started


def refused_with_503_until(client, token: str, done, *, within: float = 30) -> None:
    """Sends `token` (whose key is not cached) while the JWKS is down, until `done()`."""
    gives_up = time.monotonic() + within
    while not done():
        response = client.get(URL, headers=bearer(token))
        assert response.status_code == 503, response.text
        assert time.monotonic() < gives_up, f"not done after {within} s"
        time.sleep(0.05)


@pytest.mark.slow  # seconds of a JWKS outage and its recovery: outside the fast tier
class TestJwksOutageRecovery:
    """A failed fetch is retried after 2 s, however many failed before; a healthy JWKS is still
    fetched at most once per interval, however many kids are forged."""

    @pytest.fixture
    def interval_30(self, sqlite_url, own_jwks):
        with app_on_jwks(sqlite_url, own_jwks, min_refresh_seconds=30) as client:
            yield client

    def test_tokens_are_accepted_within_seconds_of_the_jwks_coming_back(
        self, interval_30, own_jwks
    ):
        own_jwks.up = False
        token = own_jwks.sign("alice")
        outage_ends = time.monotonic() + 2.5
        refused_with_503_until(interval_30, token, lambda: time.monotonic() >= outage_ends)
        # About 50 requests in the outage; the retry interval (2 s) let only a few through.
        assert 1 <= own_jwks.fetches <= 3
        own_jwks.up = True
        assert wait_for_status(interval_30, token, 200, within=30) < 5

    def test_recovery_is_as_quick_after_many_failed_fetches(self, interval_30, own_jwks):
        own_jwks.up = False
        token = own_jwks.sign("alice")
        refused_with_503_until(interval_30, token, lambda: own_jwks.fetches >= 4)
        # Back just after the fourth failed fetch: the whole wait before the next lies ahead
        # (it was 8 s here, and up to JWKS_MIN_REFRESH_SECONDS after more failures).
        own_jwks.up = True
        assert wait_for_status(interval_30, token, 200, within=60) < 4
        # Healthy again, so at most one fetch per interval again, however many kids are forged.
        fetches = own_jwks.fetches
        for i in range(20):
            forged = SigningKey(kid=f"forged-{i}").sign("alice", own_jwks.base_url)
            assert_401(interval_30.get(URL, headers=bearer(forged)), "key")
        assert own_jwks.fetches == fetches

    def test_forged_kids_against_a_healthy_jwks_cause_no_fetch_within_the_interval(
        self, interval_30, own_jwks
    ):
        assert interval_30.get(URL, headers=bearer(own_jwks.sign("alice"))).status_code == 200
        assert own_jwks.fetches == 1
        for i in range(50):
            token = SigningKey(kid=f"forged-{i}").sign("alice", own_jwks.base_url)
            assert_401(interval_30.get(URL, headers=bearer(token)), "key")
        assert own_jwks.fetches == 1

    def test_a_forged_kid_flood_fetches_at_most_once_per_interval(self, sqlite_url, own_jwks):
        interval = 2
        settings = settings_for(
            sqlite_url, better_auth_url=own_jwks.base_url, jwks_min_refresh_seconds=interval
        )
        with running_app(settings) as client:
            started = time.monotonic()
            i = 0
            while (elapsed := time.monotonic() - started) < 5:
                token = SigningKey(kid=f"forged-{i}").sign("alice", own_jwks.base_url)
                assert_401(client.get(URL, headers=bearer(token)), "key")
                i += 1
            assert i > 50
            assert own_jwks.fetches <= math.floor(elapsed / interval) + 1


def session_cache_token(key: SigningKey, issuer: str, *, typ: bool = True, aud: bool = True) -> str:
    """A cookie-cache JWT as Better Auth's jwt plugin signs it (`sessionCookieCache: true`)."""
    now = int(time.time())
    payload = {
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "iss": issuer,
        "aud": "better-auth:session-cache" if aud else issuer,
        "sid": "session-token-" + jti(),
        "session": {"token": "t", "userId": "alice"},
        "user": {"id": "alice"},
    }
    headers = {"kid": key.kid, **({"typ": "better-auth.session-cache+jwt"} if typ else {})}
    return jwt.encode(payload, key.private, algorithm="EdDSA", headers=headers)


class TestBetterAuthDefaults:
    """Better Auth 1.7 turns its base URL into the origin for `iss` and `aud`, and a base URL
    with a path is its whole auth base (the JWKS is `{path}/jwks`)."""

    @pytest.mark.parametrize(
        ("url", "jwks_url", "origin"),
        [
            ("https://app.example.com", "https://app.example.com/api/auth/jwks", None),
            ("https://app.example.com/", "https://app.example.com/api/auth/jwks", None),
            ("https://app.example.com/api/auth", "https://app.example.com/api/auth/jwks", None),
            ("https://app.example.com/api/auth/", "https://app.example.com/api/auth/jwks", None),
            ("https://app.example.com/auth", "https://app.example.com/auth/jwks", None),
            (
                "https://App.Example.COM:443/api/auth",
                "https://App.Example.COM:443/api/auth/jwks",
                "https://app.example.com",
            ),
            (
                "http://127.0.0.1:3000/api/auth",
                "http://127.0.0.1:3000/api/auth/jwks",
                "http://127.0.0.1:3000",
            ),
        ],
    )
    def test_jwks_url_issuer_and_audience(self, url, jwks_url, origin):
        settings = Settings(better_auth_url=url)
        assert settings.jwks_url == jwks_url
        assert (
            settings.jwks_issuer == settings.jwks_audience == (origin or "https://app.example.com")
        )

    def test_explicit_issuer_and_audience_win(self):
        settings = Settings(
            better_auth_url="https://app.example.com/api/auth",
            jwt_issuer="https://issuer.example",
            jwt_audience="api",
        )
        assert (settings.jwks_issuer, settings.jwks_audience) == ("https://issuer.example", "api")

    @pytest.mark.parametrize("url", ["app.example.com", "ftp://app.example.com", "https://"])
    def test_a_better_auth_url_that_is_not_http_is_refused(self, url):
        with pytest.raises(ValueError, match="BETTER_AUTH_URL"):
            Settings(better_auth_url=url)

    def test_a_base_url_with_the_auth_path_finds_the_jwks_once_and_accepts_origin_tokens(
        self, sqlite_url, own_jwks
    ):
        settings = settings_for(sqlite_url, better_auth_url=own_jwks.base_url + "/api/auth")
        with running_app(settings) as client:
            # Signed as Better Auth signs: iss and aud are the origin, not the auth path.
            response = client.get(URL, headers=bearer(own_jwks.sign("alice")))
            assert response.status_code == 200, response.text
            token = own_jwks.sign("alice", iss=own_jwks.base_url + "/api/auth")
            assert_401(client.get(URL, headers=bearer(token)), "issuer")


@pytest.fixture(scope="module")
def unpinned(sqlite_url, jwks):
    """JWKS configured by URL only: no issuer or audience is pinned."""
    settings = settings_for(sqlite_url, better_auth_jwks_url=jwks.base_url + "/api/auth/jwks")
    with running_app(settings) as client:
        yield client


class TestSessionCacheTokens:
    """Better Auth's session-cache cookies are signed with the same keys; never an API token."""

    @pytest.mark.parametrize(("typ", "aud"), [(True, True), (True, False), (False, True)])
    def test_refused_where_no_audience_is_pinned(self, unpinned, jwks, typ, aud):
        token = session_cache_token(jwks.keys[0], jwks.base_url, typ=typ, aud=aud)
        assert_401(unpinned.get(URL, headers=bearer(token)), "session-cache")
        metrics = unpinned.get("/metrics").text
        assert 'todo_auth_failures_total{reason="session_cache"}' in metrics

    @pytest.mark.parametrize(("typ", "aud"), [(True, True), (True, False), (False, True)])
    def test_refused_with_its_own_reason_where_the_audience_is_pinned(self, api, jwks, typ, aud):
        token = session_cache_token(jwks.keys[0], jwks.base_url, typ=typ, aud=aud)
        assert_401(api.get(URL, headers=bearer(token)), "session-cache")

    def test_an_hs256_token_typed_as_a_session_cache_is_refused(self, api):
        token = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60},
            SECRET.encode(),
            algorithm="HS256",
            headers={"typ": "better-auth.session-cache+jwt"},
        )
        assert_401(api.get(URL, headers=bearer(token)), "session-cache")

    def test_an_ordinary_token_is_still_accepted_where_no_audience_is_pinned(self, unpinned, jwks):
        assert unpinned.get(URL, headers=bearer(jwks.sign("alice"))).status_code == 200


def eddsa_signed(key: SigningKey, payload: dict | bytes, header: dict) -> str:
    """An EdDSA token signed by hand: any header, any payload bytes (PyJWT would rewrite them)."""
    signing_input = f"{_part({'alg': 'EdDSA', 'kid': key.kid, **header})}.{_part(payload)}"
    return f"{signing_input}.{_part(key.private.sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def both(sqlite_url, jwks):
    """HS256 and JWKS both configured; auth refuses before any database work, so SQLite serves."""
    with running_app(settings_for(sqlite_url, better_auth_url=jwks.base_url)) as client:
        yield client


@pytest.fixture(params=["HS256", "EdDSA"])
def sign(request, jwks):
    """A validly signed token (HS256, or EdDSA with a key of the JWKS) for alice, from a header
    and claims given as raw JSON text: JSON can spell numbers that no Python value dumps to."""

    def signed(header: dict | None = None, **raw: str) -> str:
        now = int(time.time())
        values = {
            "sub": '"alice"',
            "iss": json.dumps(jwks.base_url),
            "aud": json.dumps(jwks.base_url),
            "iat": str(now),
            "exp": str(now + 600),
            "jti": json.dumps(jti()),
            **raw,
        }
        payload = ("{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}").encode()
        if request.param == "HS256":
            return hmac_signed(SECRET.encode(), payload, header or {})
        return eddsa_signed(jwks.keys[0], payload, header or {})

    return signed


NUMERIC_DATE_EDGES = [
    "1" + "0" * 400,  # PyJWT's int() takes it; float() overflows
    "-1" + "0" * 400,
    "1" + "0" * 5000,  # beyond Python's digit limit for int parsing
    "1e400",  # Python's json reads it as inf
    "-1e400",
    "1.7976931348623157e308",
    "Infinity",
    "-Infinity",
    "NaN",
    "253402300800",  # the first second of the year 10000
    "-1",
    "-0.5",
    "true",
    "false",
    "null",
    '"1"',
    f'"{int(time.time()) + 600}"',  # a number in a string: PyJWT's int() would take it
    '"+1e3"',
    "[]",
    "{}",
]


class TestNumericDates:
    """`exp`, `nbf` and `iat` are NumericDates (RFC 7519 §2): a JSON number of seconds. Any
    other value, or one before 1970 or after the year 9999, is refused with 401, never a 500."""

    @pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
    def test_edge_cases_are_401(self, both, sign, claim):
        wrong = {}
        for value in NUMERIC_DATE_EDGES:
            response = both.get(URL, headers=bearer(sign(**{claim: value})))
            if response.status_code != 401 or response.headers.get("www-authenticate") != "Bearer":
                wrong[value[:30]] = response.status_code
        assert wrong == {}

    @pytest.mark.parametrize(
        "claims",
        [
            {"exp": "{soon}.25"},
            {"exp": "1e10"},  # the year 2286
            {"nbf": "0", "iat": "0.0"},
            {"nbf": "{now}.5", "iat": "{now}.999"},
            {"exp": "253402300799"},  # the last second of the year 9999
        ],
    )
    def test_fractions_and_distant_dates_in_range_are_accepted(self, both, sign, claims):
        now = int(time.time())
        raw = {name: text.format(now=now - 1, soon=now + 600) for name, text in claims.items()}
        response = both.get(URL, headers=bearer(sign(**raw)))
        assert response.status_code == 200, response.text


class TestExplicitTyping:
    """RFC 8725 §3.11: an access token is untyped, `JWT` or `at+jwt` (RFC 9068); a media type
    is case-insensitive and may drop its `application/` prefix (RFC 7515 §4.1.9). Better Auth
    signs other JWTs with the same keys, each with its own `typ`: none of those is accepted."""

    def test_a_token_without_typ_is_accepted(self, both, sign):
        assert both.get(URL, headers=bearer(sign({}))).status_code == 200

    @pytest.mark.parametrize(
        "typ", ["JWT", "jwt", "Jwt", "at+jwt", "AT+JWT", "application/jwt", "Application/AT+JWT"]
    )
    def test_access_token_types_are_accepted(self, both, sign, typ):
        response = both.get(URL, headers=bearer(sign({"typ": typ})))
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        "typ",
        [
            "logout+jwt",
            "secevent+jwt",
            "application/logout+jwt",
            "id+jwt",
            "JOSE",
            "JOSE+JSON",
            "JWS",
            "at+jwt ",
            " JWT",
            "application/",
            "",
            None,
            42,
            True,
            ["JWT"],
            {"JWT": 1},
        ],
    )
    def test_other_types_are_401(self, both, sign, typ):
        assert_401(both.get(URL, headers=bearer(sign({"typ": typ}))), "type")
        metrics = both.get("/metrics").text
        assert 'todo_auth_failures_total{reason="wrong_type"}' in metrics

    def test_a_session_cache_type_keeps_its_own_reason(self, both, sign):
        token = sign({"typ": "Better-Auth.Session-Cache+JWT"})
        assert_401(both.get(URL, headers=bearer(token)), "session-cache")
