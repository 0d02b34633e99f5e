"""The bus's background chores, each a service with its own interval and error handling,
run by the ``eventbus maintenance`` process (``relay``, the old name, still works).
"""
