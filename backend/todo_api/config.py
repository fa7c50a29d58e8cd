"""Settings, read once from the environment (every variable is documented in the README)."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite:///./todo.db"
# PostgreSQL keeps its timeouts as 32-bit milliseconds: a longer one is refused on every statement
# (and inf cannot be sent at all), so it is refused here, at start-up.
MAX_TIMEOUT_SECONDS = 2_147_483


class ConfigError(ValueError):
    """The configuration cannot run a service; the message says what to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # Database
    database_url: str = DEFAULT_SQLITE_URL
    database_url_direct: str | None = None
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_pool_recycle: int = Field(default=240, ge=-1)  # under Neon's 5-minute idle suspend
    db_pool_pre_ping: bool = True
    db_ping_after_idle_seconds: float = Field(default=5.0, ge=0)
    db_connect_timeout: int = Field(default=5, ge=1, le=120)
    db_statement_timeout_seconds: float = Field(default=5.0, ge=0, le=MAX_TIMEOUT_SECONDS)
    db_client_timeout_seconds: float = Field(default=6.0, ge=0, le=MAX_TIMEOUT_SECONDS)
    # How an overdue statement is cancelled: "auto" uses libpq 17's bounded cancel when the
    # libpq psycopg2 is linked with has it, else the older one; "legacy" forces the older one.
    db_cancel_api: Literal["auto", "legacy"] = "auto"
    migrate_on_start: bool = True
    migration_lock_timeout_seconds: float = Field(default=60.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    migration_statement_timeout_seconds: float = Field(default=300.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    # How long one migration statement may wait for a table lock (todo_api/migrations/env.py):
    # every request on that table queues behind the waiting statement, so this bounds the stall
    # a release causes; on a timeout the migrations are rolled back and tried again.
    migration_ddl_lock_timeout_seconds: float = Field(default=2.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    migration_ddl_attempts: int = Field(default=10, ge=1, le=100)

    # Authentication
    better_auth_secret: str | None = None
    better_auth_url: str | None = None
    better_auth_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwt_cache_size: int = Field(default=4096, ge=0, le=1_000_000)
    jwks_cache_seconds: int = Field(default=300, ge=1)
    jwks_min_refresh_seconds: int = Field(default=30, ge=0)
    jwks_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    dev_secret_file: Path | None = None

    # HTTP
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    readiness_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # Off by default: TLS usually ends at the proxy, which is the place to send HSTS from.
    hsts_seconds: int = Field(default=0, ge=0)
    # Idempotency-Key: how long an answer is kept for retries.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)

    # Observability
    metrics_token: str | None = None

    @field_validator("better_auth_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    "BETTER_AUTH_URL must be an http(s) URL such as https://app.example.com"
                )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "better_auth_secret",
        "better_auth_url",
        "better_auth_jwks_url",
        "jwt_issuer",
        "jwt_audience",
        "database_url_direct",
        "metrics_token",
        "dev_secret_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_auth(self) -> "Settings":
        secret = self.better_auth_secret
        if secret is not None and len(secret) < 32:
            raise ValueError("BETTER_AUTH_SECRET must be at least 32 characters long")
        for name, value in (("BETTER_AUTH_SECRET", secret), ("METRICS_TOKEN", self.metrics_token)):
            if value is not None and "change-me" in value.lower():
                raise ValueError(f"{name} is still a placeholder (it contains 'change-me')")
        return self

    def require_token_keys(self) -> None:
        """The API refuses to start when it has no way to verify a token."""
        if not (self.better_auth_secret or self.jwks_url):
            raise ConfigError(
                "No way to verify tokens: set BETTER_AUTH_SECRET (HS256) and/or "
                "BETTER_AUTH_URL (JWKS), or run `todo-api dev` for a local development secret"
            )

    @property
    def dev_secret_path(self) -> Path:
        # One place whatever the working directory, so `todo-api token` finds what `todo-api dev`
        # wrote: beside the package, which is backend/ in a checkout (git-ignored there).
        return self.dev_secret_file or Path(__file__).resolve().parents[1] / ".todo-dev-secret"

    @property
    def jwks_url(self) -> str | None:
        if self.better_auth_jwks_url:
            return self.better_auth_jwks_url
        if self.better_auth_url:
            return _better_auth_base_url(self.better_auth_url) + "/jwks"
        return None

    @property
    def jwks_issuer(self) -> str | None:
        return self.jwt_issuer or self._better_auth_origin

    @property
    def jwks_audience(self) -> str | None:
        return self.jwt_audience or self._better_auth_origin

    @property
    def _better_auth_origin(self) -> str | None:
        # Better Auth 1.7 rewrites its baseURL option to the URL's origin, and its JWT plugin
        # puts that origin into `iss` and `aud` (never a path, never a trailing slash).
        return _origin(self.better_auth_url) if self.better_auth_url else None

    @property
    def migration_url(self) -> str:
        return self.database_url_direct or self.database_url

    @property
    def backend(self) -> Literal["postgresql", "sqlite"]:
        return "sqlite" if self.database_url.startswith("sqlite") else "postgresql"


class ServerSettings(BaseSettings):
    """How Gunicorn runs the app (read by todo_api/gunicorn_conf.py in the master process)."""

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    host: str = "0.0.0.0"  # noqa: S104  (a container must listen on all interfaces)
    port: int = Field(default=8000, ge=0, le=65535)
    # Never derived from the CPU count: inside a container that is the host's, not the limit's.
    web_concurrency: int = Field(default=2, ge=1, le=64)
    gunicorn_timeout: int = Field(default=30, ge=1)
    graceful_timeout: int = Field(default=20, ge=1)  # below Kubernetes' 30 s grace period
    # On SIGTERM: /readyz answers 503 while requests are still served, for this long, before the
    # listeners close (todo_api/drain.py); longer than a load balancer takes to notice (README,
    # Releases). A stop takes up to this plus GRACEFUL_TIMEOUT.
    shutdown_drain_seconds: float = Field(default=5.0, ge=0, le=300)
    keepalive: int = Field(default=75, ge=1)  # above a load balancer's 60 s idle timeout
    # No recycling by default: a worker's RSS stays flat (98.3 -> 98.8 MiB over 100k requests,
    # errors included); recycling, when set, loses no request (protocol.py) but costs a restart.
    max_requests: int = Field(default=0, ge=0)
    max_requests_jitter: int = Field(default=1000, ge=0)
    # Request heads (todo_api/protocol.py): what a browser sends is under 8 KiB, a proxy in
    # front usually allows 32-64 KiB; a client gets this long from a head's first byte.
    max_request_head_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    request_head_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Request bodies (todo_api/protocol.py): a body gets this long from the end of its head; at
    # MAX_BODY_BYTES (64 KiB) that is 6.5 KB/s, slower than a poor mobile link.
    request_body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # When a worker stops, an idle keep-alive connection may still bring one request this long.
    shutdown_idle_grace_seconds: float = Field(default=1.0, gt=0, le=10)
    forwarded_allow_ips: str = "127.0.0.1"
    prometheus_multiproc_dir: str | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _better_auth_base_url(url: str) -> str:
    """Where Better Auth serves its routes, as Better Auth itself works it out: a URL with a
    path is the whole base (`https://app.example.com/api/auth`); a bare origin gets the default
    base path `/api/auth` appended. So the JWKS is found once, however the URL is written."""
    trimmed = url.rstrip("/")
    return trimmed if urlsplit(trimmed).path else trimmed + "/api/auth"


def _origin(url: str) -> str:
    """The URL's origin as a browser (and so Better Auth) writes it: lower-case scheme and host,
    no user info, no default port, no path."""
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    if ":" in host:
        host = f"[{host}]"
    default_port = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default_port else "")


@lru_cache
def get_settings() -> Settings:
    return Settings()
