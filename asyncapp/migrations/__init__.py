"""Alembic migrations of asyncapp's tables; :mod:`asyncapp.migrate` runs them at startup."""
