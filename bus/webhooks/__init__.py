"""Webhook endpoints: modules outside Python as subscribers (issue 22). What an endpoint is and
its rules (``endpoints``), how a delivery is signed (``signing``: Standard Webhooks) and written
(``payloads``: the seed's JSON or a CloudEvent), which URLs the bus may call (``urls``: the SSRF
policy), and what an attempt's answers make of an event and its endpoints (``delivery``; the
views in ``views``). The requests themselves leave from the workers (``workers.sender``)."""
