"""Alembic migrations of asyncapp's tables; :mod:`asyncapp.store.migrate` runs them at startup."""
