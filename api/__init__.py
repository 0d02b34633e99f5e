"""The HTTP face of the bus: thin FastAPI routes over ``bus.service``."""
