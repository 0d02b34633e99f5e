"""The chaos ledger's tables and the modules the chaos handlers serve (importable without
registering the handlers, which only the workers load)."""

from __future__ import annotations

MODULES = ("orders", "billing", "shipping")
POISON_MODULE = "toxic"
ORDERED_MODULE = "stock"
"""Served by an ordered handler (``@handler(..., ordered=True)``): one event of an entity at a
time, in commit order."""

LEDGER_TABLES = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL,
    attempt integer NOT NULL,
    kind text NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ix_chaos_ledger_event ON chaos_ledger (event_id);
CREATE TABLE IF NOT EXISTS chaos_completions (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS chaos_effects_keyed (
    event_id uuid PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""
LEDGER_TRUNCATE = "TRUNCATE chaos_ledger, chaos_completions, chaos_effects_keyed"
