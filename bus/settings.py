"""Every setting of the bus, read from ``EVENTBUS_*`` environment variables."""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "development", "test"}
_DEV_SECRET_FILE = ".eventbus-secret"
LARGEST_EVENT_OVERHEAD = 128 * 1024
"""An event's encoding past its event_data, at most: five 255-character fields and a
10,000-character error_message, each character escaped to six bytes, and the envelope."""


def parse_schedule(text: str) -> tuple[float, ...]:
    """``EVENTBUS_WEBHOOK_RETRY_SCHEDULE``: comma-separated seconds, each > 0; empty: no
    retry. ValueError names a bad entry."""
    delays: list[float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            delay = float(part)
        except ValueError:
            delay = -1.0
        if not 0 < delay < float("inf"):  # NaN fails this too
            raise ValueError(f"a retry delay is a positive number of seconds, not {part!r}")
        delays.append(delay)
    return tuple(delays)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


class Settings(BaseSettings):
    """Configuration; the README's table is checked against these fields."""

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_", extra="ignore")

    env: Environment = Field(
        Environment.DEVELOPMENT,
        description="development, test or production; production refuses a generated JWT secret",
    )
    database_url: str = Field(
        "sqlite:///eventbus.db",
        description="SQLAlchemy URL: postgresql+psycopg://… in production; SQLite by default",
    )
    database_network_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="PostgreSQL: seconds a connection may go silent (a partition, a half-open "
        "connection) before the client and the server both give it up: connect timeout, TCP "
        "keepalives and TCP_USER_TIMEOUT on both ends",
    )
    broker_network_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Redis or RabbitMQ broker: seconds a connection may go silent (a "
        "partition, a half-open connection) before it is given up and made again: TCP "
        "keepalives and TCP_USER_TIMEOUT on every broker socket",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker: redis://…, amqp://…, memory:// (embedded `eventbus dev`) "
        "or Redis Sentinel: sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379 (a database "
        "other than 0 on the first: sentinel://10.0.0.1:26379/1;…)",
    )
    broker_sentinel_master: str = Field(
        "mymaster",
        description="Redis Sentinel: the name of the master the sentinels of a sentinel://… "
        "broker URL watch; every connection to the broker goes to that master as they report it",
    )
    queue_prefix: str = Field("eventbus.", description="prefix of every module's queue name")
    handlers: str = Field(
        "", description="comma-separated import paths of handler modules to load in workers"
    )

    jwt_secret: str = Field("", description="HS256 secret; generated into .eventbus-secret in dev")
    jwt_public_key: str = Field(
        "", description="PEM public key (RS256/ES256); when set, HS256 is refused"
    )
    jwt_issuer: str = Field("", description="required `iss` claim when set")
    jwt_audience: str = Field("", description="required `aud` claim when set")
    jwt_max_lifetime_seconds: int = Field(
        0,
        ge=0,
        description="refuse tokens whose `exp` is further than this past `iat` (or now); 0: no cap",
    )

    max_event_data_bytes: int = Field(
        256 * 1024, description="cap on serialized event_data (413 above it)"
    )
    max_body_bytes: int = Field(1024 * 1024, description="cap on a request body (413 above it)")
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        description="cap on a list response: a page that would pass it is cut (smaller `limit`)",
    )
    http_max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="cap on a request's line and headers (431 above it)"
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="time a client has to send a request's line and headers (408)"
    )
    http_keep_alive_seconds: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this"
    )

    retry_max_attempts: int = Field(
        5, ge=1, description="handler attempts in all, the first included"
    )
    retry_base_seconds: float = Field(2.0, gt=0, description="first retry delay (doubles after)")
    retry_max_seconds: float = Field(300.0, gt=0, description="cap on one retry delay")

    task_time_limit_seconds: int = Field(
        300, ge=1, description="hard time limit of one handler run"
    )
    visibility_timeout_seconds: int = Field(
        3600, description="Redis broker visibility timeout; must exceed the longest delay + limit"
    )
    relay_interval_seconds: float = Field(1.0, gt=0, description="relay poll interval")
    retention_days: float = Field(
        30.0,
        gt=0,
        description="events older than this leave the history: their day's partition is "
        "dropped whole once no event in it is still in flight (SQLite: finished rows deleted)",
    )
    partition_minutes: int = Field(
        1440,
        ge=1,
        le=1440,
        description="the span of one history partition (PostgreSQL): a day; less only for "
        "tests and soaks; must divide a day evenly",
    )
    partitions_ahead: int = Field(
        7,
        ge=1,
        le=1000,
        description="history partitions `eventbus maintenance` makes ahead of time (a publish "
        "never waits for one: a missing span lands in the default partition)",
    )
    history_fillfactor: int = Field(
        50,
        ge=10,
        le=100,
        description="percent of each history page filled by publishes (PostgreSQL, partitions "
        "made from now on): the rest is room for the events' next versions, so a status change "
        "writes no index entry (a HOT update). 50 lets every event of a page change in one "
        "transaction (a worker's batch); higher stores less and keeps that for some of a batch",
    )
    archive_url: str | None = Field(
        None,
        description="a directory or fsspec URL (file://, s3://…): before retention drops a day's "
        "partition, its events and their attempts are written there as gzipped JSON lines "
        "(`eventbus archive list|restore`); PostgreSQL only: on SQLite, when set, retention "
        "deletes nothing",
    )
    attempts_retention_days: float = Field(
        30.0,
        gt=0,
        description="attempt history entries (`GET /system/events/{id}`) older than this are "
        "purged by the relay",
    )
    outbox_retention_seconds: float = Field(
        604800.0, ge=0, description="forwarded outbox rows are purged after this (eventbus forward)"
    )
    outbox_batch_size: int = Field(500, ge=1, description="outbox rows forwarded per batch")
    worker_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description="how often a worker records that it serves its modules; a module whose "
        "last heartbeat is older than 3 of these has no live worker",
    )

    log_format: LogFormat = Field(
        LogFormat.AUTO, description="json, text, or auto: JSON unless stderr is a terminal"
    )
    metrics_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="port of a worker's Prometheus /metrics (on 0.0.0.0); 0 turns it off",
    )
    metrics_max_event_types: int = Field(
        50, ge=0, description="event_type label values per process beyond handled ones; rest: other"
    )
    metrics_max_modules: int = Field(
        50, ge=0, description="target_module label values per process beyond handled ones"
    )
    task_events: bool = Field(
        True,
        description="Celery task events for Flower (task-sent per publish, more per attempt): "
        "each is one more Redis publish; false saves about a tenth of the CPU per event",
    )
    claim_batch_size: int = Field(
        500,
        ge=1,
        le=5000,
        description="events a worker claims at most at once from the in-flight set, chosen "
        "fairly across tenants, and commits together; fewer when a full claim's batch took "
        "longer than 0.1 s",
    )
    wakeups_per_module: int = Field(
        4,
        ge=1,
        le=1000,
        description="wake-up messages waiting per module at most (Redis): a publish sends none "
        "when this many wait, so the broker holds no backlog",
    )
    worker_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="how often a worker's main process looks for ready events no message woke "
        "it for (retries come due, a lost wake-up, claims of dead processes)",
    )
    tenant_weights: str = Field(
        "",
        description="tenants' shares of a module's handler time, e.g. "
        "`<tenant-uuid>=3,<tenant-uuid>=0.5`; unnamed tenants weigh 1",
    )
    dispatch_batch_size: int = Field(
        500,
        ge=1,
        le=5000,
        description="event ids per broker message at most: events committed together for one "
        "module travel in one message, claimed together and committed once by the worker",
    )
    publish_batch_size: int = Field(
        256,
        ge=1,
        description="concurrent publishes of one API process gathered into one INSERT and commit",
    )
    publish_batch_window_ms: float = Field(
        1.0,
        ge=0,
        le=2.0,
        description="how long a publish waits for others to share its commit (ms); 0: only "
        "those already waiting",
    )
    max_batch: int = Field(1000, ge=1, description="events per `POST /system/events/batch` at most")
    max_batch_body_bytes: int = Field(
        16 * 1024 * 1024, description="cap on a batch request's body (413 above it)"
    )
    api_threads: int = Field(
        8,
        ge=1,
        description="threads per API process running blocking work (DB, broker); more contend "
        "for the GIL",
    )
    api_wait_seconds: float = Field(
        10.0,
        gt=0,
        description="how long a request waits for one of the API's threads; longer: "
        "`503 Server busy: retry` with Retry-After (nothing of it ran: safe to retry)",
    )
    heavy_threads: int = Field(
        1,
        ge=1,
        description="threads per API process for heavy calls (replays, pages above "
        "`EVENTBUS_HEAVY_PAGE_LIMIT`, batch publishes), apart from `EVENTBUS_API_THREADS`; "
        "more contend for the GIL with every light call",
    )
    heavy_calls_per_tenant: int = Field(
        2,
        ge=1,
        description="heavy calls one tenant may have in flight per API process; more answer "
        "429 with Retry-After",
    )
    heavy_calls_total: int = Field(
        16,
        ge=1,
        description="heavy calls in flight per API process, running or waiting for a heavy "
        "thread; more answer 429 with Retry-After",
    )
    heavy_page_limit: int = Field(
        100, ge=1, description="a list page whose `limit` is above this is a heavy call"
    )
    heavy_batch_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="a batch body larger than this (or of unknown length) is a heavy call; a "
        "smaller one is parsed on the request threads, off the event loop too",
    )
    max_batch_json_values: int = Field(
        250_000,
        ge=1,
        description="JSON keys and values a batch body may hold, counted by the `[{,:` before "
        "each (inside strings too): bounds its decoding cost (413 above it)",
    )
    flower_basic_auth: str = Field(
        "", description="`user:password` (several: comma-separated) that `eventbus flower` requires"
    )
    idempotency_ttl_seconds: int = Field(
        86400,
        ge=1,
        description="how long a publish's Idempotency-Key is remembered: the same key and body "
        "within it is answered the first response again; the relay purges expired keys",
    )
    otel_enabled: bool = Field(
        False,
        description="OpenTelemetry traces: a span per request, per send and per event run, "
        "exported as the standard OTEL_* variables say (needs the `otel` extra)",
    )
    webhook_secret_overlap_seconds: int = Field(
        86400,
        ge=0,
        description="after a webhook endpoint's secret is rotated, how long the previous one "
        "stays valid: deliveries carry a signature with each until then",
    )
    webhook_allow_networks: str = Field(
        "",
        description="comma-separated CIDRs webhook URLs may reach although they are loopback, "
        "private, link-local, multicast, reserved or metadata addresses (e.g. `127.0.0.0/8` "
        "for a receiver on the same host); empty: none",
    )

    webhook_timeout_seconds: float = Field(
        15.0, gt=0, description="a webhook delivery's whole request, connect to last byte"
    )
    webhook_max_response_bytes: int = Field(
        65536, ge=0, description="the most of a receiver's answer a delivery reads"
    )
    webhook_concurrency: int = Field(
        1024,
        ge=1,
        description="webhook requests in flight per worker process (keep-alive pooled); a "
        "worker claims no more of a module's events while this many wait for answers",
    )
    webhook_tenant_concurrency: int = Field(
        256,
        ge=1,
        description="webhook requests in flight per worker process for one tenant's endpoints "
        "of a module: a claim holds at most half as many of the module's events and skips the "
        "tenants with more than half in flight (a slow endpoint fills its own tenant's share, "
        "not the process)",
    )
    webhook_retry_schedule: str = Field(
        "5,300,1800,7200,18000,36000,36000",
        description="seconds before each retry of an event a webhook endpoint failed (Svix's "
        "schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; each within -10 %); its length is "
        "the retries, so the attempts are one more. A `Retry-After` on 429/503 waits longer",
    )
    webhook_disable_after_seconds: float = Field(
        432000.0,
        gt=0,
        description="an endpoint whose every delivery failed for this long (no 2xx since its "
        "first failure) is disabled; its events wait for it to be enabled again",
    )
    webhook_waiting_recheck_seconds: float = Field(
        3600.0,
        gt=0,
        description="how often an event waiting for a disabled endpoint is looked at again "
        "(enabling the endpoint wakes its waiting events at once)",
    )

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)  # ValueError names what is wrong
        return value

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the entry
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        longest = self.retry_max_seconds + self.task_time_limit_seconds
        if self.visibility_timeout_seconds <= longest:
            raise ValueError(
                "EVENTBUS_VISIBILITY_TIMEOUT_SECONDS must exceed "
                "EVENTBUS_RETRY_MAX_SECONDS + EVENTBUS_TASK_TIME_LIMIT_SECONDS, "
                "or Redis redelivers messages that are merely waiting"
            )
        if self.max_response_bytes < self.max_event_data_bytes + LARGEST_EVENT_OVERHEAD:
            raise ValueError(
                "EVENTBUS_MAX_RESPONSE_BYTES must exceed EVENTBUS_MAX_EVENT_DATA_BYTES by "
                f"{LARGEST_EVENT_OVERHEAD} bytes: a list page holds at least one event"
            )
        if 1440 % self.partition_minutes:
            raise ValueError(
                "EVENTBUS_PARTITION_MINUTES must divide a day (1440) evenly: 1440, 60, 5, 1…"
            )
        if self.archive_url and self.partition_minutes != 1440:
            raise ValueError(
                "EVENTBUS_ARCHIVE_URL archives whole days: leave EVENTBUS_PARTITION_MINUTES at 1440"
            )
        weak = self.jwt_secret.strip().lower() in _PLACEHOLDER_SECRETS or len(self.jwt_secret) < 32
        if self.env is Environment.PRODUCTION and not self.jwt_public_key and weak:
            raise ValueError(
                "EVENTBUS_JWT_SECRET must be a real secret of at least 32 characters "
                "(or set EVENTBUS_JWT_PUBLIC_KEY) when EVENTBUS_ENV=production"
            )
        return self

    def flower_credentials(self) -> list[str]:
        """The ``user:password`` pairs Flower accepts; refuses none and malformed ones (only
        ``eventbus flower`` asks, so other processes start whatever the variable holds)."""
        pairs = [p.strip() for p in self.flower_basic_auth.split(",") if p.strip()]
        if not pairs:
            raise ValueError("EVENTBUS_FLOWER_BASIC_AUTH is not set: Flower needs user:password")
        for pair in pairs:
            user, sep, password = pair.partition(":")
            if not (user and sep and password):
                raise ValueError(
                    "EVENTBUS_FLOWER_BASIC_AUTH must be user:password (several: comma-separated)"
                )
        return pairs

    def signing_secret(self) -> str:
        """The HS256 secret; in development one is generated once and kept in a local file."""
        if self.jwt_secret:
            return self.jwt_secret
        if self.env is Environment.PRODUCTION:
            raise RuntimeError("EVENTBUS_JWT_SECRET is not set")
        path = Path(_DEV_SECRET_FILE)
        if not path.exists():
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
