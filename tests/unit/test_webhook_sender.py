"""The webhook sender against real HTTP receivers on loopback (subprocesses): answers, failures,
timeouts, redirects, the SSRF policy at connect time, the answer cap, kept-alive connections."""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bus.webhooks.urls import UrlPolicy, parse_networks
from tests.support.processes import free_port, wait_for
from tests.support.receiver import Receiver
from workers.sender import Request, Response, Sender, retry_after_seconds

LOOPBACK = UrlPolicy(parse_networks("127.0.0.1/32"))
"""127.0.0.1 allowed (the receivers), the rest of 127.0.0.0/8 still refused."""


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def sender() -> Iterator[Sender]:
    made = Sender(LOOPBACK, timeout=5)
    yield made
    made.close()


def post(sender: Sender, url: str, body: bytes = b'{"n":1}') -> Response:
    [future] = sender.send([Request("key", url, {"content-type": "application/json"}, body)])
    return future.result(timeout=30)


def test_2xx_is_acknowledged_and_the_request_arrives_as_sent(
    receiver: Receiver, sender: Sender
) -> None:
    receiver.set("/ok", status=200, body="thanks")
    headers = {"content-type": "application/json", "webhook-id": "msg_1"}
    [future] = sender.send(
        [Request(("e", "p"), receiver.url + "/ok", headers, b'{"a":"\xc3\xa9"}')]
    )
    answer = future.result(timeout=10)
    assert answer == Response(200, None, None, answer.seconds)
    assert answer.acknowledged and not answer.gone
    [got] = receiver.received("/ok")
    assert got["method"] == "POST"
    assert got["headers"]["webhook-id"] == "msg_1"
    assert got["headers"]["content-type"] == "application/json"
    assert "accept-encoding" not in got["headers"]
    assert receiver.body(got) == b'{"a":"\xc3\xa9"}'


def test_500_is_a_failure_with_the_start_of_the_body(receiver: Receiver, sender: Sender) -> None:
    receiver.set("/500", status=500, body="database down\nretry later")
    answer = post(sender, receiver.url + "/500")
    assert (answer.status, answer.error) == (500, "HTTP 500: database down retry later")
    assert not answer.acknowledged and answer.retry_after is None

    receiver.set("/500-long", status=500, body="é" * 5000)
    answer = post(sender, receiver.url + "/500-long")
    assert answer.error == "HTTP 500: " + "é" * 200

    receiver.set("/500-empty", status=500)
    assert post(sender, receiver.url + "/500-empty").error == "HTTP 500"


def test_410_is_gone(receiver: Receiver, sender: Sender) -> None:
    receiver.set("/410", status=410, body="endpoint removed")
    answer = post(sender, receiver.url + "/410")
    assert answer.gone and not answer.acknowledged
    assert answer.error == "HTTP 410: endpoint removed"


def test_retry_after_on_429_and_503(receiver: Receiver, sender: Sender) -> None:
    receiver.set("/429", status=429, retry_after="7")
    answer = post(sender, receiver.url + "/429")
    assert (answer.status, answer.retry_after) == (429, 7.0)

    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    receiver.set("/429-date", status=429, retry_after=later)
    answer = post(sender, receiver.url + "/429-date")
    assert answer.retry_after is not None and 25 < answer.retry_after <= 30

    receiver.set("/503", status=503, retry_after="120", body="maintenance")
    answer = post(sender, receiver.url + "/503")
    assert (answer.status, answer.retry_after, answer.error) == (
        503,
        120.0,
        "HTTP 503: maintenance",
    )

    receiver.set("/500-retry", status=500, retry_after="7")  # only 429 and 503 ask for a wait
    assert post(sender, receiver.url + "/500-retry").retry_after is None


def test_retry_after_values() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past


def test_a_slow_receiver_times_out_alone(receiver: Receiver) -> None:
    # Given a receiver that answers one path after 5 s, and a sender that waits 1 s
    receiver.set("/slow", delay=5)
    sender = Sender(LOOPBACK, timeout=1)
    try:
        # When one list holds the slow request and fast ones
        urls = [receiver.url + "/slow"] + [receiver.url + "/fast"] * 20
        futures = sender.send([Request(i, url, {}, b"{}") for i, url in enumerate(urls)])
        started = time.monotonic()

        # Then the fast ones are back long before the slow one gives up
        fast = [f.result(timeout=5) for f in futures[1:]]
        assert time.monotonic() - started < 0.8
        assert all(answer.status == 204 for answer in fast)
        assert not futures[0].done()
        slow = futures[0].result(timeout=5)
        assert (slow.status, slow.error) == (None, "Timeout: no answer in 1 s")
        assert 0.9 < slow.seconds < 2
    finally:
        sender.close()


def test_a_redirect_is_not_followed(receiver: Receiver, sender: Sender) -> None:
    receiver.set("/moved", status=302, location=receiver.url + "/target")
    answer = post(sender, receiver.url + "/moved")
    assert (answer.status, answer.error) == (302, "HTTP 302: redirects are not followed")
    assert not answer.acknowledged
    assert receiver.received("/target") == []


def test_a_redirect_to_an_inside_address_reaches_nothing(
    receiver: Receiver, sender: Sender
) -> None:
    # Given an inside host (127.0.0.2: loopback, outside the allow-list) listening
    with Receiver(host="127.0.0.2") as inside:
        assert post(sender, inside.url + "/x").error == "URL not allowed: 127.0.0.2"
        # When an allowed receiver redirects there
        receiver.set("/to-inside", status=307, location=inside.url + "/admin")
        answer = post(sender, receiver.url + "/to-inside")
        # Then the delivery failed and the inside host saw no connection at all
        assert answer.error == "HTTP 307: redirects are not followed"
        assert inside.stats()["connections"] == 0
        assert inside.received() == []


def test_default_policy_refuses_loopback_before_connecting(receiver: Receiver) -> None:
    # Given the default policy: no allow-list
    sender = Sender(UrlPolicy())
    before = receiver.stats()["connections"]
    try:
        # When deliveries go to 127.0.0.1, to a private literal, to a name for 127.0.0.1
        literal = post(sender, receiver.url + "/ssrf")
        private = post(sender, "http://10.0.0.1/hook")
        mapped = post(sender, f"http://[::ffff:127.0.0.1]:{receiver.port}/ssrf")
        named = post(sender, f"http://localhost:{receiver.port}/ssrf")
        octal = post(sender, f"http://127.1:{receiver.port}/ssrf")
    finally:
        sender.close()
    # Then each is refused, and no connection reached the receiver
    assert literal == Response(None, "URL not allowed: 127.0.0.1", None, literal.seconds)
    assert private.error == "URL not allowed: 10.0.0.1"
    assert private.seconds < 0.5  # nothing tried: 10.0.0.1 would not answer
    assert mapped.error == "URL not allowed: ::ffff:7f00:1"  # as yarl writes it
    assert named.status is None and named.error is not None
    assert named.error.startswith("URL not allowed: ") and "127.0.0.1" in named.error
    assert octal.error == "URL not allowed: 127.1"
    assert receiver.stats()["connections"] == before
    assert receiver.received("/ssrf") == []


def test_an_allow_list_lets_the_name_through(receiver: Receiver, sender: Sender) -> None:
    answer = post(sender, f"http://localhost:{receiver.port}/named")
    assert answer.acknowledged
    assert len(receiver.received("/named")) == 1


def test_no_answer_errors(sender: Sender) -> None:
    port = free_port()
    refused = post(sender, f"http://127.0.0.1:{port}/")
    assert refused == Response(None, f"ConnectionRefused: 127.0.0.1:{port}", None, refused.seconds)
    assert post(sender, "http://nonexistent.invalid/").error == (
        "URL host not found: nonexistent.invalid"
    )
    assert post(sender, "ftp://example.com/").error == "Invalid url"


def test_the_answer_is_read_up_to_the_cap(receiver: Receiver) -> None:
    # Given a 10 MB answer that stalls 3 s after its first MiB
    receiver.set("/big", status=500, body_bytes=10_000_000, stall=3)
    sender = Sender(LOOPBACK, timeout=2, max_body_bytes=65536)
    try:
        # When a sender that reads 64 KiB at most posts there
        answer = post(sender, receiver.url + "/big")
    finally:
        sender.close()
    # Then it stops reading at once (reading on would wait out the stall: a timeout)
    assert answer.status == 500
    assert answer.error == "HTTP 500: " + "x" * 200
    assert answer.seconds < 1.5
    # and the receiver finds the connection closed under it
    wait_for(lambda: [r for r in receiver.records() if r["kind"] == "aborted"], 10, "no abort")


def test_connections_are_kept_alive(receiver: Receiver, sender: Sender) -> None:
    for _ in range(200):
        assert post(sender, receiver.url + "/keepalive").acknowledged
    got = receiver.received("/keepalive")
    assert len(got) == 200
    assert len({r["peer"] for r in got}) <= 2


def test_a_list_goes_out_at_once(receiver: Receiver, sender: Sender) -> None:
    receiver.set("/wide", delay=0.5)
    requests = [Request(i, receiver.url + "/wide", {}, b"{}") for i in range(150)]
    started = time.monotonic()
    answers = [f.result(timeout=10) for f in sender.send(requests)]
    # 150 requests, 64 connections to one receiver: three rounds of 0.5 s, not 150
    assert time.monotonic() - started < 2.5
    assert all(a.status == 204 for a in answers)
    assert sender.send([]) == []


def test_close_ends_requests_under_way(receiver: Receiver) -> None:
    receiver.set("/hang", delay=30)
    sender = Sender(LOOPBACK)
    [future] = sender.send([Request(1, receiver.url + "/hang", {}, b"")])
    wait_for(lambda: receiver.received("/hang"), 5, "the request never arrived")
    sender.close()
    assert future.result(timeout=1).error == "Cancelled: the sender was closed"
    with pytest.raises(RuntimeError):
        sender.send([Request(1, receiver.url, {}, b"")])


def test_a_forked_child_gets_its_own_loop(receiver: Receiver, sender: Sender) -> None:
    assert post(sender, receiver.url + "/parent").acknowledged
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread is not here
        try:
            code = 0 if post(sender, receiver.url + "/child").acknowledged else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(receiver.received("/child")) == 1
    assert post(sender, receiver.url + "/parent").acknowledged


def test_a_killed_receiver_refuses_then_answers_on_the_same_port(sender: Sender) -> None:
    with Receiver() as flaky:
        assert post(sender, flaky.url + "/a").acknowledged
        flaky.kill()
        down = post(sender, flaky.url + "/a")
        assert down.status is None and down.error is not None
        flaky.set("/a", status=202)
        flaky.restart()
        assert post(sender, flaky.url + "/a").status == 202
        assert len(flaky.received("/a")) == 2  # the log outlives the kill
