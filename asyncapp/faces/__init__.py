"""The faces people and programs use: the management API, the CLI, the dashboard, the health probes.

They reach the app they are attached to through :mod:`asyncapp.faces.host` and do
their work through :class:`asyncapp.service.jobs.JobService`.
"""
