"""The firing engine: what runs on the server loop between a due time and its recorded result.

The cache of schedulable jobs, APScheduler's scheduler planning due times, the
dispatcher claiming them, the runner running them, the recorder writing how
they ended, and the cluster membership and change feed.  No Flask here.
"""
