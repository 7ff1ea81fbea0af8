"""The database behind one boundary.

Every statement and dialect difference, the threads that run them, the tables
and their migrations.
"""
