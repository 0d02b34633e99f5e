"""The core of eventbus, laid out in the order of an event's life. No HTTP here.

An event is published, sent to its module's queue, delivered to a handler (perhaps more than
once), read by callers and operators, and looked after in the background. Each stage is a
package; the tables and every SQL statement sit beneath them in ``storage``:

``settings``        every setting (``EVENTBUS_*``), one typed object.
``runtime``         :class:`bus.runtime.Runtime`: a process's long-lived parts, built once from
                    settings (engine, sessions, Celery app, dispatcher, token verifier).
``auth``            bearer tokens, the caller (:class:`bus.auth.Principal`), who may act in
                    which tenant (:func:`bus.auth.resolve_tenant`, :func:`bus.auth.acting_tenant`).
``errors``          domain errors, each with its HTTP status and the seed's exact message.
``uow``             :class:`bus.uow.UnitOfWork`: one transaction, committed by whoever made it
                    at an edge (a request, a task, a CLI command), with the messages it sends
                    after the commit.
``events/``         what an event is: input rules and the seed's output shape (``schemas``);
                    a CloudEvent 1.0 read and mapped onto a publish (``cloudevents``); the
                    status rules every change goes through (``rules``); ids that name
                    their time (``ids``).
``publish/``        1. publish: a body becomes a stored event and a message
                    (``service``), once per ``Idempotency-Key`` (``idempotency``); a replay
                    publishes matching events again (``replay``).
``broker/``         2. the way to the workers: Celery app, Redis transport, wake-up messages
                    (bounded per module) and their sender (``dispatch``), queue names, the
                    message Celery reads (``celery_message``) and dead letters, the broker for
                    operators.
``delivery/``       3. what runs next and an attempt: a worker's claims on the in-flight set
                    (``claims``: fair across tenants by ``fairness``, in order per entity where
                    a handler asks), run, record the outcome, retry (``attempts``, ``retry``);
                    the same outcome reported over HTTP (``status``); pausing a module and
                    releasing held keys (``control``).
``read/``           4. what callers read: the list (``listing``, ``pages``, ``cursors``), one
                    event with its attempts (``detail``), the counts (``stats``).
``maintenance/``    5. background chores, one module each (``resend``: wakes modules, ``counts``,
                    ``outcomes``, ``purges``, ``retention``, ``vacuum``: the in-flight set
                    when autovacuum does not), run by
                    :class:`bus.maintenance.runner.Maintenance`.
``webhooks/``       modules outside Python as subscribers (issue 22): an endpoint's body rules,
                    rights, tenancy and secret rotation (``endpoints``), Standard Webhooks
                    signatures (``signing``), the bodies (``payloads``: seed JSON, CloudEvents),
                    the URLs a delivery may reach (``urls``: the SSRF policy), what an
                    attempt's answers decide (``delivery``: retries, waiting, disabling); the
                    requests leave from ``workers.sender``.
``storage/``        PostgreSQL (SQLite for ``eventbus dev``): engines and sessions, tables,
                    migrations, and every SQL statement, one module per table or concern;
                    the history's partitions (a day each) in ``partitions``; beside the
                    history, the in-flight set (``models.event_queue``: the events not yet
                    processed), kept by the database's triggers with every write of an event,
                    and the scheduler's SQL on it (``claim_store``).
``observability/``  logs, Prometheus metrics, tracing, readiness and backlog probes.

Rules the layout keeps (``[tool.importlinter]`` in ``pyproject.toml``, run by ``make check``):
``bus`` imports none of ``api``, ``workers``, ``eventbus``; SQLAlchemy and psycopg are
imported outside ``bus.storage`` (and the unit of work) only as types; ``publish``,
``delivery`` and ``read`` never import each other; ``storage`` and ``events`` import no later
stage (nor ``webhooks``); nothing in the bus, the API or the workers imports ``maintenance``.
"""
