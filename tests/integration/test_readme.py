"""The README is a path a newcomer walks: its examples, run in order as written against a real
``eventbus dev`` (what ``make dev`` runs), from a directory laid out as a fresh clone.

Each shell or Python fence carries a marker in the HTML comment right before it:

- ``<!-- readme-test: dev -->``: runs against make dev, in "the second terminal" of Quick start
  (one bash session, so variables and the activated venv carry over; Python as
  ``python example.py`` there); ``dev; the bus logs "…"``: and the bus's output then shows that.
- ``<!-- readme-test: server -->``: replaces make dev (Ctrl-C, then this command).
- ``<!-- readme-test: save <path> -->``: a file the user saves.
- ``<!-- readme-test: skip (<why>) -->``: needs what make dev is not (PostgreSQL, docker…).

An unmarked shell or Python fence fails the test, and so does a fence without a language. Only
what a user would change is substituted: the port (a free one for 8000) and the token make dev
prints (for ``EVENTBUS_TOKEN=…``). A curl call must answer 2xx.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import BIN, ROOT, Proc, free_port

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
MARKER = re.compile(r"<!-- readme-test: (?P<how>.*?) -->")
EXPECT_LOG = re.compile(r'^dev; the bus logs "(?P<text>[^"]+)"$')
CLONE = (".venv", "bus", "api", "workers", "eventbus")  # what the examples import or run
HTTP_CODE = re.compile(r"readme-test: HTTP (\d{3})$", re.M)  # after a body with no newline
STEP_TIMEOUT = 60.0
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Example:
    line: int  # of the opening fence, from 1
    lang: str
    how: str | None  # the marker's text
    body: str

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def examples(text: str) -> list[Example]:
    """Every fenced block of ``text``, with the marker on the last non-blank line before it."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.fullmatch(before.strip())
        end = lines.index("```", i + 1)
        found.append(
            Example(
                i + 1,
                lines[i][3:].strip(),
                marker["how"] if marker else None,
                "\n".join(lines[i + 1 : end]),
            )
        )
        i = end + 1
    return found


def test_every_shell_and_python_example_is_marked() -> None:
    found = examples(README.read_text())
    assert len(found) > 20, "the fence parser found almost nothing"
    untagged = [e.where for e in found if not e.lang]
    assert not untagged, f"fences without a language (```text for plain text): {untagged}"
    unmarked = [e.where for e in found if e.lang in SHELL | PYTHON and e.how is None]
    assert not unmarked, (
        f"shell/Python examples without a <!-- readme-test: … --> marker: {unmarked}"
    )
    for e in found:
        if e.how is None:
            continue
        assert (
            e.how in ("dev", "server")
            or EXPECT_LOG.match(e.how)
            or re.fullmatch(r"save \S+", e.how)
            or re.fullmatch(r"skip \(.+\)", e.how)
        ), f"{e.where}: unknown marker {e.how!r}"
    assert sum(e.how == "server" for e in found) >= 1
    assert sum(e.how is not None and e.how.startswith("dev") for e in found) >= 5


class Terminal:
    """The user's second terminal: one bash, ``set -euo pipefail``, fed one example at a time."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.run("set -euo pipefail")

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def run(self, command: str, timeout: float = STEP_TIMEOUT) -> str:
        """Run ``command`` in the session; its output, or AssertionError if it failed (``set -e``
        ends the shell) or ran past ``timeout``."""
        done = f"readme-test-done-{uuid.uuid4().hex}"
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"{command}\necho {done}\n")
        self.popen.stdin.flush()
        output: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"still running after {timeout:.0f}s:\n" + "\n".join(output)
                ) from None
            if line is None:
                code = self.popen.wait(5)
                raise AssertionError(f"failed (exit {code}):\n" + "\n".join(output))
            if line == done:
                return "\n".join(output)
            output.append(line)

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)


def _substitute(body: str, port: int, token: str) -> str:
    """What a user changes: the port, and the token make dev printed."""
    body = re.sub(r"(?<=127\.0\.0\.1:)8000|(?<=localhost:)8000|(?<=--port )8000", str(port), body)
    return body.replace("EVENTBUS_TOKEN=…", f"EVENTBUS_TOKEN={token}")


def _user_env(tmp_path: Path) -> dict[str, str]:
    """A shell with no EVENTBUS_* settings and the venv not on PATH, whose curl reports each
    answer's status on stderr (a curl that answers 4xx still exits 0)."""
    shims = tmp_path / "shims"
    shims.mkdir()
    curl = shims / "curl"
    real = shutil.which("curl")
    assert real, "curl is not installed"
    report = "%{stderr}readme-test: HTTP %{http_code}\\n"
    curl.write_text(f"#!/bin/sh\nexec {real} --write-out '{report}' \"$@\"\n")
    curl.chmod(0o755)
    venv_bin = os.path.realpath(BIN)
    path = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and os.path.realpath(entry) != venv_bin
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTBUS_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join([str(shims), *path])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _clone(tmp_path: Path) -> Path:
    """A directory laid out as a fresh clone with its venv (links to this checkout)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in CLONE:
        (clone / name).symlink_to(ROOT / name)
    return clone


def _start(argv: list[str], env: dict[str, str], clone: Path) -> tuple[Proc, str]:
    """Start a dev bus; its token once it is ready (stopped if it never gets there)."""
    proc = Proc(argv, env, cwd=clone)
    try:
        line = proc.wait_for_line("export EVENTBUS_TOKEN=", READY_TIMEOUT)
    except AssertionError:
        proc.stop(signal.SIGKILL)
        raise
    return proc, line.split("=", 1)[1].strip()


class Walk:
    """A newcomer in a fresh clone: make dev in one terminal, the examples in a second one."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clone = _clone(tmp_path)
        self.env = _user_env(tmp_path)
        # This checkout's code, as a clone's editable install imports it; never the clone's
        # directory, so a module beside the user (./myapp) needs the README's PYTHONPATH=. too.
        self.env["PYTHONPATH"] = str(ROOT)
        self.port = free_port()
        # make dev runs .venv/bin/eventbus dev, once .venv is built
        argv = [str(BIN / "eventbus"), "dev", "--port", str(self.port)]
        self.server, self.token = _start(argv, self.env, self.clone)
        try:
            self.terminal = Terminal(self.clone, self.env)
        except BaseException:
            self.server.stop(signal.SIGKILL)
            raise

    def close(self) -> None:
        self.terminal.close()
        self.server.stop(signal.SIGKILL)

    def take(self, step: Example) -> None:
        how = step.how or ""
        body = _substitute(step.body, self.port, self.token)
        context = f"{step.where} ({how}):\n{body}\n---\n"
        if how.startswith("save "):
            (self.clone / how.removeprefix("save ")).write_text(body + "\n")
        elif how == "server":
            # Ctrl-C in make dev's terminal, then the example's command there
            assert self.server.stop(signal.SIGINT) == 0, context + self.server.output[-3000:]
            self.server, _ = _start(["bash", "-c", body], self.env, self.clone)
        else:
            self._run(step, body, context)
            if expected := EXPECT_LOG.match(how):
                self.server.wait_for_output(expected["text"], 10.0)

    def _run(self, step: Example, body: str, context: str) -> None:
        if step.lang in PYTHON:
            (self.clone / "example.py").write_text(body + "\n")
            command = "python example.py < /dev/null"
        else:
            script = self.tmp_path / f"step-{step.line}.sh"
            script.write_text(body + "\n")
            command = f"source {script} < /dev/null"
        try:
            output = self.terminal.run(command)
        except AssertionError as exc:
            raise AssertionError(
                f"{context}{exc}\n--- make dev:\n{self.server.output[-3000:]}"
            ) from None
        codes = HTTP_CODE.findall(output)
        if "curl " in body:
            assert codes, f"{context}no curl call answered:\n{output}"
        assert all(code.startswith("2") for code in codes), f"{context}{output}"


def test_the_readme_examples_run_against_make_dev(tmp_path: Path) -> None:
    steps = [e for e in examples(README.read_text()) if e.how and not e.how.startswith("skip")]
    # Given make dev running in a fresh clone
    walk = Walk(tmp_path)
    try:
        for step in steps:
            # When each example runs in order, as the README says
            # Then it succeeds, every HTTP call answers 2xx, and the bus logs what it says
            walk.take(step)
    finally:
        walk.close()
