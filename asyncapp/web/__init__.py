"""The web face's plumbing: the WSGI-to-ASGI bridge between Hypercorn and Flask."""
