"""A receiver of the bus's webhooks: the standard library's http.server and the Standard
Webhooks library, nothing else (README.md, "Webhooks"). Run it with the endpoint's secret:

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... PORT=8080 python receiver.py    # HOST: all interfaces unless set

A delivery whose signature verifies, at most 5 minutes from this clock, is answered 204 and its
event printed as one JSON line; any other is answered 400. The bus sends a delivery again with
the same ``webhook-id`` until it gets a 2xx, so an id already processed is answered 204 and
dropped (here in memory; a real receiver records the id in the transaction of its work).
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
seen: set[str] = set()  # the webhook-ids processed
seen_lock = threading.Lock()


def process(headers: dict[str, str], body: bytes) -> None:
    """The work: keep it short (the bus waits 15 s), or hand the event to a queue of your own."""
    if "ce-type" in headers:  # cloudevents-binary: the attributes are ce-* headers
        event_type = unquote(headers["ce-type"])  # percent-encoded UTF-8
    else:  # seed: the event object; cloudevents-structured: a CloudEvent
        event = json.loads(body)
        event_type = event["type"] if "specversion" in event else event["event_type"]
    print(json.dumps({"id": headers["webhook-id"], "type": event_type}), flush=True)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))  # the raw bytes
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            webhook.verify(body, headers, json_parse=False)  # the signature and the timestamp
        except WebhookVerificationError:
            self.answer(400)
            return
        with seen_lock:  # one delivery at a time: a repeat is dropped, even a concurrent one
            if headers["webhook-id"] not in seen:  # the event's id, the same on every retry
                process(headers, body)  # if it raises: no 2xx, so the bus delivers it again
                seen.add(headers["webhook-id"])
        self.answer(204)

    def answer(self, status: int) -> None:
        self.send_response(status)
        self.end_headers()


if __name__ == "__main__":
    address = (os.environ.get("HOST", ""), int(os.environ.get("PORT", "8080")))
    ThreadingHTTPServer(address, Receiver).serve_forever()
