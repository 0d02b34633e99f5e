"""Example handlers for the seed's two events; ``eventbus dev`` loads them."""

from workers.examples import notifications, warehouse

__all__ = ["notifications", "warehouse"]
