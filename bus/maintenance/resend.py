"""Wake: the outbox's other half, now that messages are wake-ups.

Workers claim what is ready from the in-flight set (:mod:`bus.delivery.claims`), and each
worker's main process polls for what no message woke it for. This chore does the same from
outside any worker, every ``EVENTBUS_RELAY_INTERVAL_SECONDS``: it ends the claims of workers
that stopped heartbeating (their processes died with claims outstanding), then sends one
wake-up to each module with an event ready and free. With workers of this release running it
is a second net; it is the only one for workers of the release before (which poll nothing),
and after a broker that lost its messages it costs one wake-up per module, not one message per
event. What the relay's lease did (send an event again when no outcome came in time) is gone:
a wake-up carries no claim, so sending one more never runs anything twice, and the broker
keeps at most ``EVENTBUS_WAKEUPS_PER_MODULE`` per module however long the workers are away.
"""

from __future__ import annotations

import logging
from datetime import datetime

from bus.broker.dispatch import Dispatch
from bus.delivery import claims
from bus.maintenance.chore import Chore
from bus.observability import tracing
from bus.runtime import Runtime
from bus.storage import claim_store
from bus.storage.db import transaction

log = logging.getLogger(__name__)

RELAY = "eventbus-relay"
"""Claims are never the relay's own: it names itself so when it ends other workers' claims."""


def run_once(runtime: Runtime, now: datetime | None = None) -> int:
    """End dead workers' claims, wake every module with a ready event; returns the modules
    woken."""
    with transaction(runtime.sessions) as session:
        modules = claim_store.modules_in_flight(session)
    if not modules:
        return 0
    claims.rescue(runtime, RELAY, modules, dead=())
    ready = claims.ready(runtime, modules, now)
    if not ready:
        return 0
    wakes = [Dispatch(hint, module) for module, hint in ready.items()]
    if runtime.settings.otel_enabled:
        # No request made these: the wake-ups start a trace of their own (README, "Tracing").
        with tracing.tracer().start_as_current_span(
            "eventbus.relay", attributes={"eventbus.module_count": len(wakes)}
        ):
            failed = runtime.dispatcher.send(wakes)
    else:
        failed = runtime.dispatcher.send(wakes)
    if failed:
        log.warning("relay: wake-ups of %d modules not sent; trying again later", len(failed))
    return len(ready) - len(failed)


def chore(runtime: Runtime) -> Chore:
    """Wake every ``EVENTBUS_RELAY_INTERVAL_SECONDS``."""
    return Chore("resend", runtime.settings.relay_interval_seconds, lambda: run_once(runtime))
