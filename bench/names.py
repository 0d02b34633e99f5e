"""Names shared by the harness and the processes it starts (kept free of heavy imports)."""

from __future__ import annotations

E2E_MODULE = "benchmod"
"""The module whose queue the bus workers drain in the end-to-end phase."""
E2E_EVENT_TYPE = "bench_noop"
PUBLISH_MODULE = "benchpub"
"""Target of the publish phase: no worker consumes it, so only the API's cost is measured."""
WARM_MODULE = "benchwarm"
"""Target of warm-up publishes (pools, threads, JIT-free caches); rows and queue are dropped."""
ORDERED_MODULE = "benchordered"
"""The order phase's module: its handler is ordered per entity (``@handler(..., ordered=True)``)."""
UNORDERED_MODULE = "benchunordered"
"""The same handler without order, for the ordered/unordered throughput ratio."""
