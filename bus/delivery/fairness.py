"""Fair shares of a module's handler time across tenants (weighted fair queueing).

A claim orders candidates by virtual time: a tenant's k-th waiting event comes at
``(used + k * cost) / weight``, where ``used`` is the handler time the tenant used in the module
lately (decayed, half-life :data:`HALF_LIFE_SECONDS`), ``cost`` its recent mean handler time per
event, and ``weight`` its share (``EVENTBUS_TENANT_WEIGHTS``, 1 by default). So a tenant that has
used little goes first, a tenant with a huge backlog gets its share and not the whole module,
and what counts is the time its handlers take, not how many events (or keys) it has. The same
rule as pgbus#426's ``rank / weight`` and start-time fair queueing, with usage for history.
The claim computes it in its one statement (``bus.storage.claim_store``) from the stored
usage; this module holds the rule's constants and the weights' parser.
"""

from __future__ import annotations

import uuid

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
