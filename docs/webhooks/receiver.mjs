// A receiver of the bus's webhooks in Node.js 20, built-in modules only (README.md, "Webhooks").
// Run it with the endpoint's secret:
//
//     WEBHOOK_SECRET=whsec_... PORT=8080 node receiver.mjs    # HOST: all interfaces unless set
//
// A delivery whose signature verifies, at most 5 minutes from this clock, is answered 204 and
// its event printed as one JSON line; any other is answered 400. The bus sends a delivery again
// with the same webhook-id until it gets a 2xx, so an id already processed is answered 204 and
// dropped (here in memory; a real receiver records the id in the transaction of its work).
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const key = Buffer.from(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
const TOLERANCE_SECONDS = 5 * 60;
const seen = new Set(); // the webhook-ids processed

// Standard Webhooks: "v1,<base64 HMAC-SHA256 of {id}.{timestamp}.{body}>", one per valid
// secret, space-separated (two during a rotation): any one matching is enough.
function verify(headers, body) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !/^\d+$/.test(timestamp ?? "") || !signatures) return false;
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest();
  return signatures.split(" ").some((signature) => {
    if (!signature.startsWith("v1,")) return false;
    const given = Buffer.from(signature.slice(3), "base64");
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

// The work: keep it short (the bus waits 15 s), or hand the event to a queue of your own.
function processEvent(headers, body) {
  let type = headers["ce-type"]; // cloudevents-binary: the attributes are ce-* headers
  if (type !== undefined) {
    type = decodeURIComponent(type); // percent-encoded UTF-8
  } else {
    const event = JSON.parse(body); // seed: the event object; cloudevents-structured: a CloudEvent
    type = "specversion" in event ? event.type : event.event_type;
  }
  console.log(JSON.stringify({ id: headers["webhook-id"], type }));
}

const server = createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes, as signed
    if (!verify(request.headers, body)) {
      response.writeHead(400).end();
      return;
    }
    const id = request.headers["webhook-id"]; // the event's id, the same on every retry
    if (!seen.has(id)) {
      try {
        processEvent(request.headers, body);
      } catch (error) {
        console.error(error);
        response.writeHead(500).end(); // no 2xx: the bus delivers it again
        return;
      }
      seen.add(id);
    }
    response.writeHead(204).end();
  });
});
server.listen(Number(process.env.PORT ?? 8080), process.env.HOST);
