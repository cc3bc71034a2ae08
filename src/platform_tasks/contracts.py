"""Task contracts: each task's name, home queue and argument model.

Producers validate against these before anything reaches Redis, and workers validate again
before running, so a payload pushed by other means fails fast too. This module imports no task
code, so producer services can depend on it alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError, field_validator

from platform_tasks.queues import QueueName

TASK_PREFIX = "platform_tasks"


def task_name(queue: QueueName, verb_noun: str) -> str:
    """The registered name of a task: ``platform_tasks.<queue>.<verb>_<noun>``."""
    return f"{TASK_PREFIX}.{queue}.{verb_noun}"


class InvalidArgumentsError(ValueError):
    """A task's arguments do not match its contract. Never retried."""


class TaskArguments(BaseModel):
    """Base of every argument model: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AddNumbersArgs(TaskArguments):
    x: int | float
    y: int | float


class SumNumbersArgs(TaskArguments):
    numbers: Annotated[list[int | float], Field(max_length=100_000)]


class DailyReportArgs(TaskArguments):
    recipient: EmailStr


class WelcomeEmailArgs(TaskArguments):
    user_email: EmailStr


_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PaymentArgs(TaskArguments):
    transaction_id: Annotated[str, Field(min_length=1, max_length=128)]
    amount: Annotated[Decimal, Field(gt=0, le=Decimal("1000000"), decimal_places=2)]
    currency: str
    idempotency_key: Annotated[str, Field(min_length=8, max_length=255)]

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        if not _CURRENCY.match(value):
            raise ValueError("expected a three-letter ISO 4217 code such as USD")
        return value

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float_rounding(cls, value: object) -> object:
        # A float such as 0.1 has no exact decimal form; read it through its shortest repr.
        return str(value) if isinstance(value, float) else value


class ThumbnailSize(TaskArguments):
    width: Annotated[int, Field(gt=0, le=4096)]
    height: Annotated[int, Field(gt=0, le=4096)]


class ThumbnailArgs(TaskArguments):
    source: Annotated[str, Field(min_length=1, max_length=1024)]
    sizes: Annotated[list[ThumbnailSize], Field(min_length=1, max_length=16)]

    @field_validator("source")
    @classmethod
    def _inside_media_root(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("expected a path relative to the media root, without '..'")
        return value

    @field_validator("sizes", mode="before")
    @classmethod
    def _pairs_to_sizes(cls, value: object) -> object:
        # Accept [[w, h], ...] and [w, ...] (square) as well as [{"width":..,"height":..}].
        if not isinstance(value, list):
            return value
        converted: list[object] = []
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                converted.append({"width": item, "height": item})
            elif isinstance(item, list | tuple) and len(item) == 2:
                converted.append({"width": item[0], "height": item[1]})
            else:
                converted.append(item)
        return converted


@dataclass(frozen=True, slots=True)
class TaskContract:
    """What a producer needs to know about a task: its name, queue and argument model."""

    name: str
    queue: QueueName
    arguments: type[TaskArguments]
    #: The model's field names in order, read once: pydantic builds them anew on each read.
    _fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fields", tuple(self.arguments.model_fields))

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskArguments:
        """Validate positional and keyword arguments as one call would bind them."""
        fields = self._fields
        if len(args) > len(fields):
            raise InvalidArgumentsError(
                f"{self.name} takes {len(fields)} arguments ({', '.join(fields)}), "
                f"got {len(args)} positional"
            )
        values = dict(zip(fields, args, strict=False))
        if values and kwargs:
            clashes = sorted(set(values) & set(kwargs))
            if clashes:
                raise InvalidArgumentsError(f"{self.name} got {', '.join(clashes)} twice")
        values.update(kwargs)
        try:
            return self.arguments.model_validate(values)
        except ValidationError as error:
            # One line per argument: a union such as int | float reports once, not per member.
            first_by_argument: dict[str, str] = {}
            for item in error.errors(include_input=False, include_url=False):
                argument = str(item["loc"][0]) if item["loc"] else "arguments"
                first_by_argument.setdefault(argument, item["msg"])
            problems = "; ".join(f"{name}: {msg}" for name, msg in first_by_argument.items())
            raise InvalidArgumentsError(f"{self.name}: {problems}") from None


ADD_NUMBERS = TaskContract(task_name(QueueName.DEFAULT, "add_numbers"), QueueName.DEFAULT,
                           AddNumbersArgs)
SUM_NUMBERS = TaskContract(task_name(QueueName.DEFAULT, "sum_numbers"), QueueName.DEFAULT,
                           SumNumbersArgs)
SEND_DAILY_REPORT = TaskContract(task_name(QueueName.DEFAULT, "send_daily_report"),
                                 QueueName.DEFAULT, DailyReportArgs)
SEND_WELCOME_EMAIL = TaskContract(task_name(QueueName.EMAIL, "send_welcome_email"),
                                  QueueName.EMAIL, WelcomeEmailArgs)
PROCESS_PAYMENT = TaskContract(task_name(QueueName.PAYMENTS, "process_payment"),
                               QueueName.PAYMENTS, PaymentArgs)
MAKE_THUMBNAIL = TaskContract(task_name(QueueName.MEDIA, "make_thumbnail"), QueueName.MEDIA,
                              ThumbnailArgs)

TASKS: Mapping[str, TaskContract] = MappingProxyType(
    {
        contract.name: contract
        for contract in (
            ADD_NUMBERS,
            SUM_NUMBERS,
            SEND_DAILY_REPORT,
            SEND_WELCOME_EMAIL,
            PROCESS_PAYMENT,
            MAKE_THUMBNAIL,
        )
    }
)
