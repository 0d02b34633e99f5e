"""``make bench``: the bus against bare Celery on this machine, every process started here.

Run ``python -m bench --help``. Results go to ``bench/results.json`` and ``bench/results.md``.
"""
