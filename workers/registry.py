"""Which function handles which module's events, and how handler modules are found.

A handler is registered for a target module and an event type::

    from workers import Event, handler

    @handler("warehouse", "inventory_updated")
    def on_inventory_updated(event: Event) -> None: ...

    @handler("warehouse", "*")                      # the module's catch-all
    def on_anything_else(event: Event, session: Session) -> None: ...

A handler that declares a parameter named ``session`` receives the SQLAlchemy session of the
attempt: what it writes there commits in the same transaction that marks the event processed,
and rolls back if the handler raises. It must not commit or roll back that session itself.

Handler modules are imported from ``EVENTBUS_HANDLERS`` (comma-separated import paths) and from
the ``eventbus.handlers`` entry-point group of installed packages.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from bus.delivery.claims import Order
from bus.observability import metrics
from workers.event import Event

log = logging.getLogger(__name__)

ANY_EVENT_TYPE = "*"
BLOCK = "block"
SKIP = "skip"
ON_FAILURE = (BLOCK, SKIP)
ENTRY_POINT_GROUP = "eventbus.handlers"
SESSION_PARAMETER = "session"

HandlerFunc = Callable[..., object]
F = TypeVar("F", bound=HandlerFunc)


@dataclass(frozen=True, slots=True)
class Registration:
    """One handler function and how to call it."""

    module: str
    event_type: str
    func: HandlerFunc
    wants_session: bool
    ordered: bool = False
    """Events of one (tenant, entity_type, entity_id) run one at a time, in commit order."""
    on_failure: str = BLOCK
    """For an ordered handler, after an event's last attempt failed: ``block`` keeps its key
    held (later events wait) until an operator releases it; ``skip`` lets them go on. Retries
    hold the key either way."""

    @property
    def name(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"

    def __call__(self, event: Event, session: Session) -> None:
        if self.wants_session:
            self.func(event, session=session)
        else:
            self.func(event)


class Registry:
    """Handlers by (module, event type), with a per-module ``"*"`` catch-all."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Registration] = {}

    def add(
        self,
        module: str,
        event_type: str,
        func: HandlerFunc,
        *,
        ordered: bool = False,
        on_failure: str = BLOCK,
    ) -> Registration:
        """Register ``func``; a second, different handler for the same pair is an error."""
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure is one of {', '.join(ON_FAILURE)}, not {on_failure!r}")
        if not module or module == ANY_EVENT_TYPE:
            raise ValueError("a handler names one target module")
        if not event_type:
            raise ValueError("a handler names an event type, or '*' for all of the module's")
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__qualname__}: handlers run in worker processes; make it sync")
        registration = Registration(
            module, event_type, func, _wants_session(func), ordered, on_failure
        )
        existing = self._handlers.get((module, event_type))
        if existing is not None and existing.name != registration.name:
            raise ValueError(
                f"{module}/{event_type} is already handled by {existing.name}; "
                f"refusing {registration.name}"
            )
        self._handlers[(module, event_type)] = registration
        # Handled labels are never folded into "other" by the metrics' label budgets.
        metrics.allow_labels(module, None if event_type == ANY_EVENT_TYPE else event_type)
        return registration

    def find(self, module: str, event_type: str) -> Registration | None:
        """The handler for an event: the exact one, else the module's catch-all, else None."""
        return self._handlers.get((module, event_type)) or self._handlers.get(
            (module, ANY_EVENT_TYPE)
        )

    def order(self, module: str) -> Order:
        """Which of ``module``'s event types its handlers want run in order per entity."""
        mine = [r for (m, _), r in self._handlers.items() if m == module]
        rest = any(r.ordered for r in mine if r.event_type == ANY_EVENT_TYPE)
        return Order(
            types=tuple(sorted(r.event_type for r in mine if r.ordered and r.event_type != "*")),
            rest=rest,
            except_types=tuple(
                sorted(r.event_type for r in mine if not r.ordered and r.event_type != "*")
            )
            if rest
            else (),
        )

    def modules(self) -> list[str]:
        """Every module with at least one handler, sorted (the default queues of a worker)."""
        return sorted({module for module, _ in self._handlers})


def _wants_session(func: HandlerFunc) -> bool:
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return SESSION_PARAMETER in parameters


registry = Registry()
"""The process's registry, filled by :func:`handler` as handler modules are imported."""


def handler(
    module: str,
    event_type: str = ANY_EVENT_TYPE,
    *,
    ordered: bool = False,
    on_failure: str = BLOCK,
) -> Callable[[F], F]:
    """Register the decorated function for ``module``'s events of ``event_type`` (``"*"``: all).

    Delivery is at least once: make the handler idempotent, keyed on ``event.id``
    (``event.idempotency_key``), or write its effects through the ``session`` parameter.

    ``ordered=True``: the events of one (tenant, entity_type, entity_id) run one at a time, in
    the order the bus committed them; a failed one holds its key while retries are to come,
    and after its last attempt ``on_failure="block"`` (the default) keeps the key held until
    an operator releases it, ``on_failure="skip"`` lets the key move on.
    """

    def register(func: F) -> F:
        registry.add(module, event_type, func, ordered=ordered, on_failure=on_failure)
        return func

    return register


def load_handlers(paths: str | Iterable[str] = "", *, use_entry_points: bool = True) -> list[str]:
    """Import handler modules named in ``paths`` (comma-separated) and in the entry points.

    Returns the modules imported. An import error stops the worker: a worker that silently
    lacked a handler would fail every event sent to it.
    """
    names = [p.strip() for p in paths.split(",")] if isinstance(paths, str) else list(paths)
    loaded: list[str] = []
    for name in filter(None, names):
        importlib.import_module(name)
        loaded.append(name)
    if use_entry_points:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            target: Any = entry_point.load()
            loaded.append(getattr(target, "__name__", entry_point.value))
    log.debug("handler modules loaded: %s", ", ".join(loaded) or "none")
    return loaded
