"""The bus's long-lived parts, built once per process from settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from bus.auth import TokenVerifier
from bus.broker.celery_app import make_celery
from bus.broker.dispatch import Dispatcher
from bus.delivery.retry import RetryPolicy
from bus.observability.tracing import Sender
from bus.settings import Settings
from bus.storage.db import make_engine, make_sessionmaker
from bus.uow import UnitOfWork, guard

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker


@dataclass
class Runtime:
    """Settings, database, broker and verifier of one process; parts are made on first use."""

    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.database_url, self.settings.database_network_timeout_seconds
        )

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        sessions = make_sessionmaker(self.engine)
        guard(sessions)
        return sessions

    @cached_property
    def celery(self) -> Any:
        return make_celery(self.settings)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(
            self.celery,
            self.sessions,
            self.settings.queue_prefix,
            max_ids=self.settings.dispatch_batch_size,
            wake_bound=self.settings.wakeups_per_module,
            tracer=Sender(self.settings.broker_url) if self.settings.otel_enabled else None,
        )

    @cached_property
    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.settings)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy.from_settings(self.settings)

    def unit_of_work(self) -> UnitOfWork:
        """A new unit of work: for the two edges, an API request and a worker delivery."""
        return UnitOfWork(self.sessions(), self.dispatcher)

    def close(self) -> None:
        """Release pooled database connections and let go of the Celery app.

        Broker connections stay open: kombu pools them per broker URL for the whole process,
        so closing them here would break every other app of this process on the same broker.
        """
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "celery" in self.__dict__:
            self.celery.close()
