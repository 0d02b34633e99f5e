"""What callers read: the list (``listing``, ``pages``, ``cursors``), one event with its
attempts (``detail``), the counts (``stats``).
"""
