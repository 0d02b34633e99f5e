"""The ``eventbus`` command: the one place that composes ``api``, ``workers`` and ``bus``."""
