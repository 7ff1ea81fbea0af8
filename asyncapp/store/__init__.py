"""The database behind one boundary.

:mod:`~asyncapp.store.interface` is what the layers above use (the ``Store``
protocol, over plain values); behind it, :mod:`~asyncapp.store.sql`, every
statement and dialect difference, the threads that run them, the tables and
their migrations.
"""
