"""`todo-api`: dev (run locally), serve (production), migrate, token (mint a dev token)."""

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import jwt

from todo_api.preflight import StartupError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run locally with a generated secret (SQLite by default)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, help="default: PORT, else 8000")

    commands.add_parser("serve", help="run Gunicorn with Uvicorn workers (production)")

    migrate = commands.add_parser("migrate", help="apply the database migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--down", action="store_true", help="downgrade to REVISION instead")

    token = commands.add_parser("token", help="mint an HS256 token for a user id")
    token.add_argument("user_id")
    token.add_argument("--minutes", type=int, default=60)
    token.add_argument("--email")
    token.add_argument("--name")

    args = parser.parse_args(argv)
    try:
        if args.command == "dev":
            _dev(args.host, args.port)
        elif args.command == "serve":
            _serve()
        elif args.command == "migrate":
            _migrate(args.revision, downgrade=args.down)
        else:
            print(mint_token(args.user_id, minutes=args.minutes, email=args.email, name=args.name))
    except StartupError as error:
        # One line, no traceback: the message names the variable and the fix.
        sys.exit(f"todo-api {args.command}: {error}")


def mint_token(
    user_id: str, *, minutes: int = 60, email: str | None = None, name: str | None = None
) -> str:
    """An HS256 token signed with BETTER_AUTH_SECRET (or the dev secret), like Better Auth's."""
    from todo_api.config import Settings
    from todo_api.preflight import load

    settings = load(Settings)
    secret = settings.better_auth_secret or _read_dev_secret(settings.dev_secret_path)
    if not secret:
        raise StartupError(
            "no secret: set BETTER_AUTH_SECRET, or start `todo-api dev` (make run) once to "
            f"generate one in {settings.dev_secret_path}"
        )
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + 60 * minutes}
    optional = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "email": email,
        "name": name,
    }
    claims.update({key: value for key, value in optional.items() if value})
    return jwt.encode(claims, secret.encode(), algorithm="HS256")


def _read_dev_secret(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _dev_secret(path: Path) -> str:
    """The development secret in its one place (see Settings.dev_secret_path), made once."""
    secret = _read_dev_secret(path)
    if secret:
        return secret
    secret = secrets.token_urlsafe(48)
    try:
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
    except OSError as error:
        raise StartupError(
            f"cannot write the development secret to {path} ({error.strerror}): set "
            "DEV_SECRET_FILE to a writable path, or BETTER_AUTH_SECRET"
        ) from None
    print(f"Generated a development secret in {path} (never use it in production)")
    return secret


def _dev(host: str, port: int | None) -> None:
    import uvicorn
    from sqlalchemy.engine import make_url

    from todo_api.config import ServerSettings, Settings
    from todo_api.logs import logging_config, skip_unused_record_fields
    from todo_api.preflight import check_databases, load

    server = load(ServerSettings)
    settings = load(Settings)
    if not settings.better_auth_secret:
        os.environ["BETTER_AUTH_SECRET"] = _dev_secret(settings.dev_secret_path)
        settings = load(Settings)
    check_databases(settings, migrating=settings.migrate_on_start)
    port = server.port if port is None else port
    token = mint_token("demo")
    base = f"http://{host}:{port}"
    database = (
        make_url(settings.database_url).render_as_string(hide_password=True)
        if "DATABASE_URL" in os.environ
        else "embedded SQLite file ./todo.db"
    )
    print(
        f"""
Todo API (development) on {base}   docs: {base}/docs
Database: {database}

Get a token for any user id (valid 60 minutes):
    backend/.venv/bin/todo-api token demo        (or: make token USER_ID=demo)
Try it:
    TOKEN={token}
    curl -s -H "Authorization: Bearer $TOKEN" {base}/api/demo/tasks
""",
        flush=True,
    )
    # Text logs for a person at a terminal, unless LOG_FORMAT says otherwise.
    log_format = server.log_format if "LOG_FORMAT" in os.environ else "text"
    log_config = logging_config(log_format, server.log_level)
    skip_unused_record_fields()
    uvicorn.run("todo_api.main:app", host=host, port=port, log_config=log_config, access_log=False)


def _migrate(revision: str, *, downgrade: bool) -> None:
    from todo_api.config import Settings
    from todo_api.migrate import migrate
    from todo_api.preflight import check_database, load, migration_variable

    settings = load(Settings)
    check_database(settings, settings.migration_url, migration_variable(settings))
    migrate(settings, revision, downgrade=downgrade)
    print(f"database migrated {'down' if downgrade else 'up'} to {revision}")


def _serve() -> None:
    """`gunicorn -c python:todo_api.gunicorn_conf todo_api.main:app`, with a drain on SIGTERM."""
    from todo_api.config import ServerSettings, Settings
    from todo_api.preflight import check_databases, load

    # Here, before Gunicorn forks, with one clear line, rather than in every worker's start-up.
    server = load(ServerSettings)
    settings = load(Settings)
    try:
        settings.require_token_keys()
    except ValueError as error:
        raise StartupError(str(error)) from None
    check_databases(settings, migrating=settings.migrate_on_start)
    from gunicorn.app.wsgiapp import WSGIApplication

    from todo_api import drain

    sys.argv = ["gunicorn", "-c", "python:todo_api.gunicorn_conf", "todo_api.main:app"]
    drain.serve(
        WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]"),
        drain_seconds=server.shutdown_drain_seconds,
    )


if __name__ == "__main__":
    main()
