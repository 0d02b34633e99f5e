"""The HTTP face of the bus: thin FastAPI routes over the services of ``bus``."""
