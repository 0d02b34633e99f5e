"""Webhook endpoints: modules outside Python as subscribers (issue 22). What an endpoint is and
its rules (``endpoints``), how a delivery is signed (``signing``: Standard Webhooks), and which
URLs the bus may call (``urls``: the SSRF policy). Delivery itself is not built yet."""
