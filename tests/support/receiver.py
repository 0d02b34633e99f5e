"""A scripted webhook receiver: a real HTTP server on 127.0.0.1 in a subprocess, so a test can
SIGKILL it and start it again on the same port.

What it answers is scripted per path (``"*"``: every other path) and can change while it
runs: a status, a delay, a ``Retry-After``, a ``Location``, a body (text, or ``body_bytes`` of
``x`` with a ``stall`` after the first MiB). What it received is appended to a JSONL file, one
line per request (path, headers with lowercase names, body, the client's address), written
and flushed before the answer is sent: it survives a kill; and an ``answered`` line (path,
``webhook-id``, status) once the answer is written out.

The test talks to it over a Unix socket beside the log (``control.sock``): ``POST /_control``
replaces the script, ``GET /_stats`` counts TCP connections and requests. The TCP port then
sees only the traffic under test (a connection count of 0 means nothing reached it).

    with Receiver(script={"/fail": {"status": 500, "body": "nope"}}) as receiver:
        receiver.set("/slow", delay=5)
        ... POST to receiver.url + "/fail" ...
        assert receiver.received("/fail")[0]["body"] == ...

``python -m tests.support.receiver --port N --log FILE`` runs the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, free_port, wait_for

DEFAULT_RULE: Mapping[str, Any] = {"status": 204}
RULE_KEYS = frozenset(
    {"status", "delay", "retry_after", "location", "body", "body_bytes", "stall", "headers"}
)
STALL_AFTER = 1 << 20
"""A ``body_bytes`` answer with a ``stall`` waits after this many bytes."""
_CHUNK = b"x" * 65536


# The server (the subprocess) ------------------------------------------------------------------


class _Server:
    def __init__(self, log: Path | None, rules: dict[str, dict[str, Any]]) -> None:
        self.rules = rules
        self.log = log.open("a", encoding="utf-8") if log is not None else None
        self.connections = 0
        self.requests = 0

    def record(self, line: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.log.flush()

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.path.startswith("/_"):
            return await self.control(request)
        self.requests += 1
        body = await request.read()
        rule = self.rules.get(request.path) or self.rules.get("*") or DEFAULT_RULE
        if self.log is not None:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            line: dict[str, Any] = {
                "kind": "request",
                "time": time.time(),
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "peer": f"{peer[0]}:{peer[1]}" if peer else None,
            }
            try:
                line["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                line["body_hex"] = body.hex()
            self.record(line)
        if rule.get("delay"):
            await asyncio.sleep(float(rule["delay"]))
        headers = dict(rule.get("headers") or {})
        if rule.get("retry_after") is not None:
            headers["Retry-After"] = str(rule["retry_after"])
        if rule.get("location") is not None:
            headers["Location"] = str(rule["location"])
        status = int(rule.get("status", 204))
        if rule.get("body_bytes"):
            return await self.stream(request, status, headers, rule)
        answer = web.Response(status=status, headers=headers, text=rule.get("body"))
        if self.log is None:
            return answer
        # Written out before it is logged: an "answered" line is an answer the client gets
        # (a SIGKILL after it still lets the kernel send the bytes it holds).
        try:
            await answer.prepare(request)
            await answer.write_eof()
        except (ConnectionError, RuntimeError) as exc:
            self.record({"kind": "aborted", "path": request.path, "error": repr(exc)})
            return answer
        self.record(
            {
                "kind": "answered",
                "time": time.time(),
                "path": request.path,
                "id": request.headers.get("webhook-id"),
                "status": status,
            }
        )
        return answer

    async def stream(
        self, request: Any, status: int, headers: dict[str, str], rule: Mapping[str, Any]
    ) -> Any:
        from aiohttp import web

        size = int(rule["body_bytes"])
        answer = web.StreamResponse(status=status, headers=headers)
        answer.content_length = size
        await answer.prepare(request)
        written = 0
        try:
            while written < size:
                if rule.get("stall") and written == STALL_AFTER:
                    await asyncio.sleep(float(rule["stall"]))
                chunk = _CHUNK[: size - written]
                await answer.write(chunk)
                written += len(chunk)
            await answer.write_eof()
        except (ConnectionError, RuntimeError) as exc:
            self.record(
                {"kind": "aborted", "path": request.path, "written": written, "error": repr(exc)}
            )
        return answer

    async def control(self, request: Any) -> Any:
        from aiohttp import web

        if request.path == "/_control" and request.method == "POST":
            rules = await request.json()
            self.rules = {path: dict(rule) for path, rule in rules.items()}
            return web.json_response({"rules": self.rules})
        if request.path == "/_stats":
            return web.json_response({"connections": self.connections, "requests": self.requests})
        return web.Response(status=404)


async def _serve(
    host: str, port: int, log: Path | None, rules: dict[str, dict[str, Any]], control: Path | None
) -> None:
    from aiohttp import web

    server = _Server(log, rules)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    factory = runner.server
    assert factory is not None

    def counted() -> Any:
        server.connections += 1
        return factory()

    loop = asyncio.get_running_loop()
    servers = [  # held: a server nothing refers to is collected, and closed, under uvloop
        await loop.create_server(counted, host, port, reuse_address=True, backlog=1024)
    ]
    if control is not None:
        with contextlib.suppress(FileNotFoundError):
            control.unlink()
        servers.append(await loop.create_unix_server(factory, str(control)))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"listening on {host}:{port}", flush=True)
    await stop.wait()
    for listening in servers:
        listening.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a scripted webhook receiver")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, help="JSONL file of the requests received")
    parser.add_argument("--rules", type=Path, help="JSON file: path -> rule, read at start")
    parser.add_argument("--control", type=Path, help="Unix socket for /_control and /_stats")
    args = parser.parse_args(argv)
    rules = json.loads(args.rules.read_text()) if args.rules and args.rules.exists() else {}
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args.host, args.port, args.log, rules, args.control))


# The test's side ------------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Receiver:
    """A receiver subprocess on ``host``:``port`` (a free port by default; another loopback
    address than 127.0.0.1 stands for an inside host) answering by ``script`` (path -> rule,
    see :data:`RULE_KEYS`); its files in ``directory`` (by default a new temporary one, removed
    when a ``with`` block ends). ``record=False``: nothing logged (the bench)."""

    def __init__(
        self,
        port: int | None = None,
        script: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        directory: Path | None = None,
        record: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="eventbus-receiver-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "received.jsonl"
        self.rules_file = self.dir / "rules.json"
        self.control_socket = self.dir / "control.sock"
        self.output = self.dir / "receiver.out"
        self.record = record
        self.rules: dict[str, dict[str, Any]] = {}
        for path, rule in (script or {}).items():
            self.rules[path] = _checked(rule)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>``; add a path for a scripted one."""
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Receiver:
        """Start the server and wait until it answers (the script as set so far)."""
        self._write_rules()
        argv = [
            sys.executable, "-m", "tests.support.receiver",
            "--host", self.host,
            "--port", str(self.port),
            "--rules", str(self.rules_file),
            "--control", str(self.control_socket),
        ]  # fmt: skip
        if self.record:
            argv += ["--log", str(self.log)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(self._answers, 15, f"the receiver on port {self.port} never started")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the receiver exited:\n{self.output.read_text()[-2000:]}")
        try:
            self.stats()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL: no goodbye to open connections (what the log holds stays)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self) -> Receiver:
        """Kill (if running) and start again on the same port, with the same script."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop; the temporary directory it made goes too (read the log before)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def set(self, path: str, **rule: Any) -> None:
        """Answer requests to ``path`` (``"*"``: any unscripted path) by ``rule``, at once if
        running and after a restart: ``status``, ``delay`` (seconds), ``retry_after`` (the
        header's text), ``location``, ``body`` (text), ``body_bytes``, ``stall``,
        ``headers``. No key: the default again (204)."""
        if rule:
            self.rules[path] = _checked(rule)
        else:
            self.rules.pop(path, None)
        self._apply()

    def reset(self) -> None:
        """Forget the whole script."""
        self.rules.clear()
        self._apply()

    def _apply(self) -> None:
        self._write_rules()
        if self.alive:
            self._call("POST", "/_control", self.rules)

    def _write_rules(self) -> None:
        tmp = self.rules_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rules))
        os.replace(tmp, self.rules_file)

    def stats(self) -> dict[str, int]:
        """``connections`` (TCP connections accepted) and ``requests`` since this start."""
        result: dict[str, int] = self._call("GET", "/_stats")
        return result

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.control_socket)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers={"content-type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise AssertionError(f"receiver {path}: {answer.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def records(self) -> list[dict[str, Any]]:
        """Every line of the log (requests, and answers the client cut short: ``aborted``)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        """The requests received (to ``path`` only, if given), oldest first, across restarts."""
        return [
            r
            for r in self.records()
            if r.get("kind") == "request" and (path is None or r["path"] == path)
        ]

    def body(self, record: Mapping[str, Any]) -> bytes:
        """A received request's body as bytes."""
        if "body" in record:
            return str(record["body"]).encode()
        return bytes.fromhex(record["body_hex"])


def _checked(rule: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise ValueError(f"unknown receiver rule keys: {sorted(unknown)}")
    return dict(rule)


if __name__ == "__main__":
    main()
