"""`make bench`: the service as a real process under wrk, on SQLite and PostgreSQL.

    python -m tests.bench                  # ours only: every operation at concurrency 1, 16, 64
    python -m tests.bench --quick          # about three minutes: concurrency 16, short cells
    python -m tests.bench --prefect        # the same cells against Prefect 3.9.1, side by side
    python -m tests.bench --queries-only   # the query cells alone, on a table loaded first

`make bench-prefect` installs Prefect's server into its own virtualenv first
(`python -m tests.bench.prefect_install`). Results go to `bench-results/` as JSON.
"""
