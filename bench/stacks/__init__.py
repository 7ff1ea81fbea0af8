"""The four stacks under test and how to start each as a real process.

Every stack serves the same bench routes, so the driver does not care which it talks to:

- ``GET /healthz``: 200 when ready.
- ``GET /bench/sync``: a sync view returning a short string (M4).
- ``GET /bench/async``: awaits ``GET {BENCH_UPSTREAM}/delay?ms=100`` (M3).
- ``POST /bench/oneshot?n=&at=&ms=&tag=``: n one-shot jobs due at epoch ``at``, job j
  calling ``/delay?ms=&tag=&job=j`` (M1).
- ``POST /bench/interval?n=&start=&runs=&ms=&tag=``: n jobs every 1 s, job j first due
  at ``start + j/n``, ``runs`` runs each (M2, M5).
- ``POST /bench/lag?seconds=S`` then ``GET /bench/lag``: event-loop lag of the server
  loop over the next S seconds (not on seed, which has no loop).
"""
