"""An attempt: a worker claims events, runs the handler and records the outcome
(``attempts``), waits before the next try (``retry``); ``status`` is the same outcome reported
over HTTP.
"""
