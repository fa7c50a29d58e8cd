"""Start-up checks for the CLI: settings and the database, each failure as one line that says
which variable is wrong and how to fix it (a newcomer's first run must not end in a traceback)."""

from typing import TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from todo_api.config import Settings
from todo_api.db import create_db_engine, normalise_url

S = TypeVar("S", bound=BaseSettings)
URL_FORMS = "postgresql://user:password@host:5432/dbname or sqlite:///path/to/todo.db"


class StartupError(Exception):
    """A start-up failure; the message is one line naming the variable and the fix."""


def load(settings_class: type[S]) -> S:
    """The settings from the environment, or a StartupError naming each invalid variable."""
    try:
        return settings_class()
    except ValidationError as error:
        raise StartupError("; ".join(_describe(problem) for problem in error.errors())) from None


def _describe(problem: ErrorDetails) -> str:
    message = str(problem["msg"]).removeprefix("Value error, ")
    if not problem["loc"]:  # a check across fields: its message names the variables
        return message
    variable = str(problem["loc"][0]).upper()
    if variable in message:
        return message
    # The value is not repeated: it may be a secret.
    return f"{variable}: {message}; set a valid value, or unset it for the default (README)"


def check_databases(settings: Settings, *, migrating: bool) -> None:
    """Connect once to each database the command will use, before it starts anything."""
    check_database(settings, settings.database_url, "DATABASE_URL")
    if migrating and settings.database_url_direct:
        check_database(settings, settings.database_url_direct, "DATABASE_URL_DIRECT")


def migration_variable(settings: Settings) -> str:
    return "DATABASE_URL_DIRECT" if settings.database_url_direct else "DATABASE_URL"


def check_database(settings: Settings, url: str, variable: str) -> None:
    try:
        target = make_url(normalise_url(url))
        target.port  # noqa: B018  (parsed lazily: a port that is not a number fails here)
    except (ArgumentError, ValueError):
        raise StartupError(f"{variable} is not a database URL: write it as {URL_FORMS}") from None
    if target.get_backend_name() not in ("postgresql", "sqlite"):
        raise StartupError(
            f"{variable} names a {target.get_backend_name()} database; only PostgreSQL and "
            f"SQLite are supported: write it as {URL_FORMS}"
        )
    try:
        engine = create_db_engine(settings, url=url, pooled=False)
    except (ArgumentError, NoSuchModuleError, ValueError, TypeError) as error:
        raise StartupError(
            f"{variable} cannot be used ({error}); write it as {URL_FORMS}"
        ) from None
    try:
        with engine.connect():
            pass
    except DBAPIError as error:
        raise StartupError(_explain(variable, target, str(error.orig))) from None
    finally:
        engine.dispose()


def _explain(variable: str, target: URL, reason: str) -> str:
    """The driver's complaint as the fix an operator needs (never the URL: it holds a password)."""
    if target.get_backend_name() == "sqlite":
        return (
            f"{variable}: cannot open the SQLite file {target.database} ({reason}): "
            "create its directory, or point it at a path this user may write"
        )
    host, port, user = target.host or "localhost", target.port or 5432, target.username or ""
    where = f"{host}:{port}"
    detail = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    if "does not exist" in reason and f'database "{target.database}"' in reason:
        return (
            f'{variable}: database "{target.database}" does not exist on {where}: create it '
            f"(createdb -h {host} -p {port} -U {user or 'postgres'} {target.database}) or "
            "name an existing database in the URL"
        )
    if any(
        marker in reason
        for marker in ("password authentication failed", "role ", "no pg_hba.conf entry")
    ):
        return (
            f"{variable}: {where} refused user {user!r} ({detail}): fix the user and password "
            "in the URL (percent-encode @ : / ? # in a password)"
        )
    if "could not translate host name" in reason:
        return f"{variable}: unknown host {host!r}: fix the host name in the URL"
    if any(marker in reason for marker in ("Connection refused", "timeout expired", "No route")):
        return (
            f"{variable}: nothing answers at {where} ({detail}): start PostgreSQL there, "
            "or fix the host and port in the URL"
        )
    return f"{variable}: cannot connect to {where}: {detail}"
