"""`todo-api`: dev (run locally), serve (production), migrate, token (mint a dev token)."""

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import jwt

DEV_SECRET_FILE = Path(".todo-dev-secret")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="todo-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run locally with a generated secret (SQLite by default)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)

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
    if args.command == "dev":
        _dev(args.host, args.port)
    elif args.command == "serve":
        _serve()
    elif args.command == "migrate":
        from todo_api.config import Settings
        from todo_api.migrate import migrate as run_migrations

        run_migrations(Settings(), args.revision, downgrade=args.down)
        print(f"database migrated {'down' if args.down else 'up'} to {args.revision}")
    else:
        print(mint_token(args.user_id, minutes=args.minutes, email=args.email, name=args.name))


def mint_token(
    user_id: str, *, minutes: int = 60, email: str | None = None, name: str | None = None
) -> str:
    """An HS256 token signed with BETTER_AUTH_SECRET (or the dev secret), like Better Auth's."""
    from todo_api.config import Settings

    secret = os.environ.get("BETTER_AUTH_SECRET") or _read_dev_secret()
    if not secret:
        sys.exit("no secret: set BETTER_AUTH_SECRET, or start `todo-api dev` once to generate one")
    settings = Settings(better_auth_secret=secret)
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


def _read_dev_secret() -> str | None:
    return DEV_SECRET_FILE.read_text().strip() if DEV_SECRET_FILE.exists() else None


def _dev(host: str, port: int) -> None:
    import uvicorn

    if not os.environ.get("BETTER_AUTH_SECRET"):
        secret = _read_dev_secret()
        if not secret:
            secret = secrets.token_urlsafe(48)
            DEV_SECRET_FILE.touch(mode=0o600)
            DEV_SECRET_FILE.write_text(secret + "\n")
            print(
                f"Generated a development secret in {DEV_SECRET_FILE} (never use it in production)"
            )
        os.environ["BETTER_AUTH_SECRET"] = secret
    token = mint_token("demo")
    base = f"http://{host}:{port}"
    print(
        f"""
Todo API (development) on {base}   docs: {base}/docs
Database: {os.environ.get("DATABASE_URL") or "embedded SQLite file ./todo.db"}

Get a token for any user id (valid 60 minutes):
    backend/.venv/bin/todo-api token demo        (or: make token USER_ID=demo)
Try it:
    TOKEN={token}
    curl -s -H "Authorization: Bearer $TOKEN" {base}/api/demo/tasks
""",
        flush=True,
    )
    from todo_api.config import ServerSettings
    from todo_api.logs import logging_config, skip_unused_record_fields

    # Text logs for a person at a terminal, unless LOG_FORMAT says otherwise.
    server = ServerSettings()
    log_format = server.log_format if "LOG_FORMAT" in os.environ else "text"
    log_config = logging_config(log_format, server.log_level)
    skip_unused_record_fields()
    uvicorn.run("todo_api.main:app", host=host, port=port, log_config=log_config, access_log=False)


def _serve() -> None:
    """Exactly `gunicorn -c python:todo_api.gunicorn_conf todo_api.main:app`."""
    from todo_api.config import Settings

    # Refuse here, with one clear line, rather than in every worker's start-up.
    try:
        Settings().require_token_keys()
    except ValueError as error:
        sys.exit(f"todo-api serve: {error}")
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "-c", "python:todo_api.gunicorn_conf", "todo_api.main:app"]
    run()


if __name__ == "__main__":
    main()
