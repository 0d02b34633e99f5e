"""Fair shares of a module's handler time across tenants (weighted fair queueing).

A claim orders candidates by virtual time: a tenant's k-th waiting event comes at
``(used + k * cost) / weight``, where ``used`` is the handler time the tenant used in the module
lately (decayed, half-life :data:`HALF_LIFE_SECONDS`), ``cost`` its recent mean handler time per
event, and ``weight`` its share (``EVENTBUS_TENANT_WEIGHTS``, 1 by default). So a tenant that has
used little goes first, a tenant with a huge backlog gets its share and not the whole module,
and what counts is the time its handlers take, not how many events (or keys) it has. The same
rule as pgbus#426's ``rank / weight`` and start-time fair queueing, with usage for history.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from bus.storage.claim_store import Share, Usage

HALF_LIFE_SECONDS = 10.0
"""How long a tenant's usage is remembered: long enough that a backlog cannot win by bursts,
short enough that a tenant idle for a minute starts afresh."""
DECAY = 0.5 ** (1 / HALF_LIFE_SECONDS)
"""What is left of a second of usage after one second."""
DEFAULT_COST = 0.001
"""The cost of one event of a tenant with no history yet (seconds), until it has some."""


def parse_weights(text: str) -> dict[uuid.UUID, float]:
    """``EVENTBUS_TENANT_WEIGHTS``: ``<tenant-uuid>=<weight>`` pairs, comma-separated."""
    weights: dict[uuid.UUID, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tenant, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"tenant weight {item!r} is not <tenant-uuid>=<weight>")
        weight = float(value)
        if not weight > 0:
            raise ValueError(f"tenant weight {item!r} must be positive")
        weights[uuid.UUID(tenant.strip())] = weight
    return weights


def shares(
    usages: Sequence[Usage], weights: Mapping[uuid.UUID, float], now: datetime
) -> list[Share]:
    """Each tenant's place in a claim, from its stored usage decayed to ``now``."""
    known = [u for u in usages if u.events > 0]
    mean = sum(u.seconds for u in known) / sum(u.events for u in known) if known else DEFAULT_COST
    result: list[Share] = []
    for usage in usages:
        weight = weights.get(usage.tenant_id, 1.0)
        age = max((now - usage.updated_at).total_seconds(), 0.0)
        used = usage.seconds * DECAY**age
        cost = usage.seconds / usage.events if usage.events > 0 else mean
        result.append(Share(usage.tenant_id, used / weight, max(cost, 1e-6) / weight))
    return result
