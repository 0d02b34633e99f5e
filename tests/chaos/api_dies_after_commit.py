"""``eventbus`` whose API SIGKILLs itself between a publish's commit and its send.

The real app under uvicorn, in this one process; only ``Dispatcher.send`` is wrapped, and it is
what the request's session dependency calls right after ``session.commit()`` returned
(``api/deps.py``). On the ``CHAOS_DIE_AFTER_SENDS``-th call the process dies before sending, as
a power cut or an OOM kill landing in that window would, with other requests in flight.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from bus.broker.dispatch import Dispatch, Dispatcher

_die_after = int(os.environ.get("CHAOS_DIE_AFTER_SENDS", "0"))
_send = Dispatcher.send
_calls = 0


def _send_or_die(self: Dispatcher, dispatches: Sequence[Dispatch]) -> Any:
    global _calls
    _calls += 1
    if _die_after and _calls >= _die_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return _send(self, dispatches)


Dispatcher.send = _send_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    from eventbus.cli import main

    sys.exit(main(sys.argv[1:]))
