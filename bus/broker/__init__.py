"""The way to the workers: the Celery app (``celery_app``), the Redis transport
(``transport``), the messages and who sends them (``dispatch``), queue names (``queues``),
what a well-formed message is, to the type of every header Celery reads
(``celery_message``), and where refused ones go (``deadletter``), and the broker as
operators see it (``inspector``).
"""
