"""Alembic environment: the URL comes from the caller's config (``eventbus migrate``)."""

from __future__ import annotations

from alembic import context

from bus.storage.db import make_engine
from bus.storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url is set by bus.storage.migrate"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url, poolclass=None) if url.startswith("sqlite") else make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
