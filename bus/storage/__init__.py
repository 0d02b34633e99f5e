"""PostgreSQL (SQLite for ``eventbus dev``): engines and sessions (``db``), the tables
(``models``), migrations (``migrate``, ``migrations/``), and every SQL statement, in one module
a table (``event_store``, ``event_queries``, ``count_store``, ``attempt_store``,
``idempotency_store``, ``heartbeat_store``, ``endpoint_store``).
"""
