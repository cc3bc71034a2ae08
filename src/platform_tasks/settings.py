"""The platform's configuration: one typed object read once from ``PLATFORM_TASKS_*`` variables.

Every other module receives a :class:`Settings`; nothing else reads the environment. A bad
value stops start-up with :class:`SettingsError`, whose message names each offending variable
and what it expected, and never repeats the value of a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "PLATFORM_TASKS_"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "console"]


class SettingsError(ValueError):
    """The environment holds a value the platform cannot start with."""


class SentinelAddress(tuple[str, int]):
    """One Sentinel's ``host`` and ``port``."""

    __slots__ = ()

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]


def _parse_sentinels(raw: object) -> tuple[SentinelAddress, ...]:
    if isinstance(raw, tuple | list):
        items = [str(item) for item in raw]
    elif isinstance(raw, str):
        items = [part.strip() for part in raw.split(",") if part.strip()]
    else:
        raise ValueError("expected a comma-separated list of host:port")
    addresses: list[SentinelAddress] = []
    for item in items:
        host, sep, port_text = item.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            # The entry itself is not echoed: a pasted URL could carry a password.
            raise ValueError(
                f"expected host:port with a port in 1-65535 (entry {len(addresses) + 1})"
            )
        addresses.append(SentinelAddress((host.strip("[]"), int(port_text))))
    return tuple(addresses)


def url_database(url: str) -> int | None:
    """The database number a Redis URL's path names (``redis://host:6379/2`` -> 2), None
    when it names none; raises ``ValueError`` for a path that is not a number."""
    path = urlsplit(url).path.strip("/")
    if not path:
        return None
    if not path.isdigit():
        raise ValueError(f"expected the Redis URL's path to be a database number, got /{path}")
    return int(path)


class Settings(BaseSettings):
    """Everything the platform's processes need to know about their surroundings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    # Broker topology: either one node by URL, or Sentinels plus a master name.
    redis_url: str | None = Field(
        default=None,
        repr=False,  # the URL may carry a password
        description="redis:// or rediss:// URL of a single Redis node; a database in its "
        "path must be PLATFORM_TASKS_BROKER_DB's (the databases come from the two *_DB "
        "settings)",
    )
    sentinels: Annotated[tuple[SentinelAddress, ...], NoDecode] = Field(
        default=(), description="comma-separated host:port of every Sentinel"
    )
    sentinel_master: str = Field(
        default="platform-tasks", min_length=1, description="master name the Sentinels watch"
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user")
    redis_password: SecretStr | None = Field(default=None, description="Redis password")
    sentinel_password: SecretStr | None = Field(
        default=None, description="password of the Sentinels themselves"
    )
    redis_tls: bool = Field(default=False, description="talk TLS to Redis and Sentinels")
    redis_tls_ca_file: Path | None = Field(default=None, description="CA bundle for TLS")
    broker_db: int = Field(default=0, ge=0, le=15, description="database number of the broker")
    result_db: int = Field(default=1, ge=0, le=15, description="database number of results")
    redis_socket_timeout: float = Field(
        default=5.0, gt=0, le=300, description="seconds before a Redis command times out"
    )

    # Outside services the tasks talk to.
    smtp_host: str = Field(default="127.0.0.1", min_length=1, description="SMTP server host")
    smtp_port: int = Field(default=25, gt=0, lt=65536, description="SMTP server port")
    smtp_sender: str = Field(
        default="platform-tasks@localhost",
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="From address of outgoing mail",
    )
    smtp_username: str | None = Field(default=None, description="SMTP login user")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP login password")
    smtp_starttls: bool = Field(default=False, description="upgrade SMTP with STARTTLS")
    smtp_timeout: float = Field(default=10.0, gt=0, le=120, description="SMTP socket timeout")
    payment_gateway_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8080"), description="base URL of the payment gateway"
    )
    payment_gateway_timeout: float = Field(
        default=10.0, gt=0, le=120, description="payment gateway socket timeout in seconds"
    )
    media_root: Path = Field(default=Path("media"), description="directory of media files")
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="largest image, in pixels, a thumbnail accepts"
    )
    report_recipient: str = Field(
        default="ops@example.com",
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="who receives the daily report beat schedules",
    )

    # Behaviour.
    timezone: str = Field(default="America/New_York", description="IANA zone for schedules")
    max_payload_bytes: int = Field(
        default=256 * 1024, gt=0, le=64 * 1024 * 1024, description="largest task payload"
    )
    result_expires_seconds: int = Field(
        default=24 * 3600, gt=0, description="how long task results are kept"
    )
    beat_lock_timeout: int = Field(
        default=30, ge=5, le=3600, description="seconds a dead beat's lock blocks its successor"
    )
    dead_letter_max_length: int = Field(
        default=100_000, ge=1, le=10_000_000,
        description="most entries the dead-letter list keeps; the oldest are dropped past it",
    )
    visibility_timeout_seconds: int = Field(
        default=300, ge=5, le=86_400,
        description="seconds after which a message held by a worker that stopped refreshing "
        "it (a dead worker) goes back on its queue; running workers refresh theirs",
    )
    max_redeliveries: int = Field(
        default=5, ge=1, le=1000,
        description="times a message whose runs never finish (the worker died each time) is "
        "run again before it is dead-lettered instead",
    )
    log_level: LogLevel = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = Field(
        default="json",
        description="json (one object per line, for machines) or console (for people)",
    )

    # Metrics and health.
    metrics_port: int = Field(
        default=9808, ge=0, lt=65536,
        description="port of a worker's /metrics (0: the worker records no metrics at all)",
    )
    metrics_host: str = Field(
        default="0.0.0.0", min_length=1,
        description="address the worker's and the monitor's /metrics listen on",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="prometheus-client multiprocess directory of a worker; emptied at start "
        "(default: a fresh directory under the system temp dir)",
    )
    monitor_port: int = Field(
        default=9809, gt=0, lt=65536, description="port of the monitor's /metrics"
    )
    monitor_interval_seconds: float = Field(
        default=5.0, ge=0.2, le=300, description="how often the monitor polls the broker"
    )
    task_events: bool = Field(
        default=False,
        description="workers send Celery task events (Flower's task list and celery-exporter's "
        "worker series need them)",
    )
    heartbeat_file: Path | None = Field(
        default=None,
        description="file a worker touches on every heartbeat, for the liveness probe "
        "(default: platform-tasks-<queue>.alive in the system temp dir)",
    )
    heartbeat_interval_seconds: float = Field(
        default=5.0, ge=0.2, le=300,
        description="how often a worker refreshes its heartbeat; missing 3 means it is gone",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() hands over the environment it was given; nothing else is read.
        return (init_settings,)

    @field_validator("sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> tuple[SentinelAddress, ...]:
        return _parse_sentinels(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
            raise ValueError("expected redis://host:port or rediss://host:port")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError as error:
            raise ValueError("expected a numeric port in the Redis URL") from error
        url_database(value)  # raises on a path that is not a database number
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"expected an IANA time zone such as UTC, got {value!r}") from error
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_tls_ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"expected a readable CA file, {str(value)!r} does not exist")
        return value

    @model_validator(mode="after")
    def _one_topology(self) -> Settings:
        if self.redis_url and self.sentinels:
            raise ValueError(
                "set either PLATFORM_TASKS_REDIS_URL or PLATFORM_TASKS_SENTINELS, not both"
            )
        if not self.redis_url and not self.sentinels:
            raise ValueError(
                "set PLATFORM_TASKS_SENTINELS (host:port,...) or PLATFORM_TASKS_REDIS_URL"
            )
        if self.redis_url:
            named = url_database(self.redis_url)
            # The databases are the two settings'; a URL naming another one would have
            # split the platform: Celery took the setting, the platform's clients the URL.
            if named is not None and named != self.broker_db:
                raise ValueError(
                    f"PLATFORM_TASKS_REDIS_URL names database {named} but "
                    f"PLATFORM_TASKS_BROKER_DB is {self.broker_db}: the databases come from "
                    "PLATFORM_TASKS_BROKER_DB and PLATFORM_TASKS_RESULT_DB, drop the "
                    f"/{named} from the URL"
                )
        return self

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def redis_location(self, db: int) -> str:
        """Where database ``db`` of the broker's Redis is, for messages: never a credential."""
        if self.uses_sentinel:
            sentinels = ", ".join(_host_port(address.host, address.port)
                                  for address in self.sentinels)
            return f"master {self.sentinel_master!r} of the Sentinels at {sentinels}, db {db}"
        parts = urlsplit(self.redis_url or "")
        scheme = "rediss" if self.redis_tls or parts.scheme == "rediss" else "redis"
        return f"{scheme}://{_host_port(parts.hostname or '', parts.port or 6379)}/{db}"


def _host_port(host: str, port: int) -> str:
    # An IPv6 address keeps its brackets, or its last group would read as the port.
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error.get("loc", ())]
    field = location[0] if location else ""
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if not field:
        return message
    return f"{ENV_PREFIX}{field.upper()}: {message}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (the process environment by default).

    Raises :class:`SettingsError` with one line per bad variable.
    """
    source = os.environ if environ is None else environ
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in source.items()
        if key.upper().startswith(ENV_PREFIX)
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as error:
        lines = sorted({_describe(item) for item in error.errors(include_input=False)})
        raise SettingsError("; ".join(lines)) from None
