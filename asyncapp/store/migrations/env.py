"""Alembic environment: migrate the connection :mod:`asyncapp.store.migrate` hands over.

asyncapp runs Alembic programmatically (no ``alembic.ini``): the caller puts an
open connection in ``config.attributes["connection"]``.  To write a migration,
add a module to ``versions/`` by hand, following the existing ones, and add
a test of it to ``tests/test_migrations.py``.
"""

from __future__ import annotations

from alembic import context

from asyncapp.store.migrate import VERSION_TABLE
from asyncapp.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
