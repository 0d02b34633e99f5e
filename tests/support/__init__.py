"""The tests' one toolbox, shared by every suite (no suite imports another suite's modules).

- :mod:`~tests.support.services`: the machine's PostgreSQL, Redis and RabbitMQ, a database of a
  test's own, :func:`~tests.support.services.empty_tables` (what each test starts without), and
  :func:`~tests.support.services.make_settings`, the one maker of settings;
- :mod:`~tests.support.tokens`: tenants, the test secret, minted tokens and ``auth()``;
- :mod:`~tests.support.forged_tokens`: hand-made JWTs PyJWT refuses to produce;
- :mod:`~tests.support.factories`: the seed's publish body and rows written straight to the store;
- :mod:`~tests.support.envelope`: :func:`~tests.support.envelope.assert_envelope`, the one check
  of a response's status and of the seed's error envelope;
- :mod:`~tests.support.processes`: ``eventbus`` subprocesses (:class:`Proc`), their environment,
  free ports and :func:`wait_for`, the one bounded wait;
- :mod:`~tests.support.servers`: a redis-server or PostgreSQL cluster of a test's own, to kill;
- :mod:`~tests.support.queues`: what a test's Redis queues hold, and their removal;
- :mod:`~tests.support.workers`: real ``eventbus worker`` runs: the handlers module
  (:mod:`~tests.support.handlers`), publishing for it and waiting for an event's status.

Fixtures are declared in ``tests/conftest.py`` only (suites may add their own), built from these.
"""
