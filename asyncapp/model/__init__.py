"""What asyncapp is about, as values with no I/O.

Jobs, runs, triggers, changes, and the registry of job functions.
"""
