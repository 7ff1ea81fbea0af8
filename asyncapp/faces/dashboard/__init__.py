"""The ``/dashboard`` pages: views, page plumbing, login and CSRF, the run chart.

Templates and static files live beside them.
"""
