"""The users and tasks tables, and the task API's input and output models."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, StringConstraints, WithJsonSchema, field_validator
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    func,
)
from sqlmodel import Field, SQLModel

from todo_api.db import UtcDateTime

TITLE_MAX = 200
DESCRIPTION_MAX = 1000


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate (valid JSON, "\ud800") cannot be
    # encoded as UTF-8: both would fail in the driver, so refuse them here as a 422.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


# The OpenAPI schema states exactly what the validators accept, so that a client (or a fuzzer)
# reading it never sends a "valid" value we refuse: a title is 1-200 characters once its
# surrounding whitespace is trimmed (`\s` in Python's sense, as `str.strip`), without NUL.
_TITLE_PATTERN = rf"^\s*[^\s\x00](?:[^\x00]{{0,{TITLE_MAX - 2}}}[^\s\x00])?\s*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX),
    AfterValidator(_storable_text),
    WithJsonSchema({"type": "string", "pattern": _TITLE_PATTERN}),
]
Description = Annotated[
    str,
    StringConstraints(max_length=DESCRIPTION_MAX),
    AfterValidator(_storable_text),
    WithJsonSchema({"type": "string", "maxLength": DESCRIPTION_MAX, "pattern": r"^[^\x00]*$"}),
]


def _created_at_column() -> Any:
    return Column(UtcDateTime, nullable=False, server_default=func.now())


class User(SQLModel, table=True):
    """A Better Auth user (the table Better Auth uses with modelName "users" and snake_case)."""

    __tablename__ = "users"

    id: str = Field(sa_column=Column(Text, primary_key=True))
    email: str | None = Field(default=None, sa_column=Column(Text, unique=True))
    name: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    email_verified: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    image: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=_created_at_column())
    updated_at: datetime = Field(sa_column=_created_at_column())


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        # "This user's tasks, newest first" and the same under a status filter, read straight off
        # an index (backwards for desc) without a sort and without touching other users' rows.
        Index("ix_tasks_user_created", "user_id", "created_at", "id"),
        Index("ix_tasks_user_completed_created", "user_id", "completed", "created_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(
        sa_column=Column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    )
    title: str = Field(sa_column=Column(String(TITLE_MAX), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(Text))
    completed: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    created_at: datetime = Field(sa_column=_created_at_column())
    updated_at: datetime = Field(sa_column=_created_at_column())
    # Incremented by every UPDATE: the ETag's part that changes (updated_at could repeat within
    # a clock tick). Not part of the JSON body.
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))


class _Input(SQLModel):
    # strict: JSON true/false only for booleans, strings only for text (no "1" -> True).
    # extra="ignore": id, user_id and timestamps in a body are never honoured.
    model_config = ConfigDict(strict=True, extra="ignore")  # type: ignore[assignment]


class TaskCreate(_Input):
    title: Title
    description: Description | None = None
    completed: bool = False


def _omitted_not_null(schema: dict[str, Any]) -> None:
    # Omitted means "unchanged": a `default: null` would tell clients to send null.
    for name in ("title", "completed"):
        schema["properties"][name].pop("default", None)


class TaskUpdate(_Input):
    """Any subset of the fields; description null clears it, title or completed null is refused."""

    model_config = ConfigDict(json_schema_extra=_omitted_not_null)

    # None only marks "omitted" (left out of the schema); an explicit null is refused below.
    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    completed: bool | SkipJsonSchema[None] = None

    @field_validator("title", "completed")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be omitted but not null")
        return value


class CompletionSet(_Input):
    completed: bool


class TaskPublic(SQLModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


TaskStatus = Literal["all", "pending", "completed"]
TaskSort = Literal["created", "updated", "title"]
SortOrder = Literal["asc", "desc"]
