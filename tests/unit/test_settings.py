"""Settings refuse what would break the bus in production, before anything starts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bus.settings import Environment, Settings

STRONG_SECRET = "9f3c1b7e5a2d48c6b0e4f7a1d3c5e8b2"  # 32 characters
PEM = "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----\n"


@pytest.fixture(autouse=True)
def no_eventbus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' settings come from their arguments only."""
    import os

    for name in list(os.environ):
        if name.startswith("EVENTBUS_"):
            monkeypatch.delenv(name)


def production(**values: Any) -> Settings:
    return Settings(env=Environment.PRODUCTION, **values)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "changeme",
        "change-me",
        "secret",
        "dev",
        "development",
        "test",
        "  CHANGEME  ",
        STRONG_SECRET[:31],
    ],
    ids=repr,
)
def test_production_refuses_a_placeholder_or_short_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="EVENTBUS_JWT_SECRET must be a real secret"):
        production(jwt_secret=secret)


def test_production_takes_a_real_secret() -> None:
    assert production(jwt_secret=STRONG_SECRET).signing_secret() == STRONG_SECRET


def test_production_with_a_public_key_needs_no_secret() -> None:
    # (The key is only parsed by the verifier; settings just carry it.)
    assert production(jwt_public_key=PEM).jwt_public_key == PEM


@pytest.mark.parametrize("env", [Environment.DEVELOPMENT, Environment.TEST])
def test_outside_production_a_weak_secret_is_allowed(env: Environment) -> None:
    assert Settings(env=env, jwt_secret="test").jwt_secret == "test"


def test_production_with_no_secret_refuses_to_sign() -> None:
    settings = Settings.model_construct(env=Environment.PRODUCTION, jwt_secret="")

    with pytest.raises(RuntimeError, match="EVENTBUS_JWT_SECRET is not set"):
        settings.signing_secret()


def test_the_secret_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_ENV", "production")
    monkeypatch.setenv("EVENTBUS_JWT_SECRET", STRONG_SECRET)

    assert Settings().jwt_secret == STRONG_SECRET


def test_a_placeholder_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_ENV", "production")
    monkeypatch.setenv("EVENTBUS_JWT_SECRET", "changeme")

    with pytest.raises(ValidationError):
        Settings()


# The visibility timeout must outlast the longest wait for a retry plus one run, or Redis hands a
# message that is merely waiting to a second worker.


def test_visibility_timeout_must_exceed_the_longest_delay_plus_the_time_limit() -> None:
    with pytest.raises(ValidationError, match="EVENTBUS_VISIBILITY_TIMEOUT_SECONDS must exceed"):
        Settings(retry_max_seconds=300, task_time_limit_seconds=300, visibility_timeout_seconds=600)


def test_visibility_timeout_just_above_the_bound() -> None:
    settings = Settings(
        retry_max_seconds=300, task_time_limit_seconds=300, visibility_timeout_seconds=601
    )

    assert settings.visibility_timeout_seconds == 601


def test_a_longer_retry_cap_needs_a_longer_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="VISIBILITY_TIMEOUT"):
        Settings(retry_max_seconds=4000)


def test_the_defaults_are_consistent() -> None:
    settings = Settings()

    assert settings.visibility_timeout_seconds > (
        settings.retry_max_seconds + settings.task_time_limit_seconds
    )
    assert settings.max_event_data_bytes == 256 * 1024
    assert settings.max_event_data_bytes < settings.max_body_bytes


@pytest.mark.parametrize("minutes", [7, 11, 1439])
def test_a_partition_span_must_divide_a_day(minutes: int) -> None:
    with pytest.raises(ValidationError, match="divide a day"):
        Settings(partition_minutes=minutes)


def test_the_archive_keeps_whole_days() -> None:
    assert Settings(partition_minutes=5).partition_minutes == 5
    assert Settings(archive_url="memory://archive").archive_url == "memory://archive"
    with pytest.raises(ValidationError, match="archives whole days"):
        Settings(archive_url="memory://archive", partition_minutes=60)
