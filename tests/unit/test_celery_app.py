"""The Celery settings the bus's guarantees rest on."""

from __future__ import annotations

import pytest

from bus.broker.celery_app import make_celery
from bus.settings import Settings


@pytest.mark.parametrize(("limit", "soft"), [(300, 290.0), (11, 9.9), (5, 4.5), (1, 0.9)])
def test_the_soft_limit_warns_shortly_before_the_hard_one(limit: int, soft: float) -> None:
    conf = make_celery(Settings(task_time_limit_seconds=limit, jwt_secret="x" * 40)).conf

    assert conf.task_time_limit == limit
    assert conf.task_soft_time_limit == pytest.approx(soft)


def test_delivery_is_at_least_once() -> None:
    conf = make_celery(Settings(jwt_secret="x" * 40)).conf

    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 3600
