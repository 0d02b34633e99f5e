"""What operators see: JSON logs (``logs``), Prometheus metrics (``metrics``,
``multiprocess``), OpenTelemetry tracing (``tracing``), readiness and backlog (``probes``).
"""
