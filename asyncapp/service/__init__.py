"""The job use cases shared by the API, the CLI, the dashboard and code.

Validation first, then one committed transaction per change.
"""
