"""Placeholder until the jobs CLI lands (owned by the API work)."""

from __future__ import annotations

from flask import Flask


def init_cli(app: Flask) -> None:
    """Register the ``flask jobs`` command group."""
