"""An event's first life: a publish (``service``), its ``Idempotency-Key`` (``idempotency``),
and a replay that publishes matching events again (``replay``).
"""
