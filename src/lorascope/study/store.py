"""The results store: one SQLite database per study, ``<out>/results.db`` (§14: results land in one database).

WAL journal (readers never block the writer), a generous busy timeout, and every write in a
``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so concurrent writers queue on the busy
timeout instead of failing with "database is locked" when a read transaction tries to upgrade. In a study
only the driver writes; the store is nevertheless safe with several writing processes on one host
(tests/test_store.py). SQLite over NFS is not safe across hosts: keep the driver the only writer.

Every derived row carries the key of the job it came from, and ``replace_rows`` swaps a job's rows in one
transaction: ingesting the same job twice leaves exactly one copy (idempotent upsert by job key).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from lorascope.results import layout

DB_NAME = layout.RESULTS_DB
BUSY_TIMEOUT_S = 120.0

SCHEMA = {
    "jobs": """key TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, params TEXT, role TEXT,
               status TEXT NOT NULL, node TEXT, attempts INTEGER, started REAL, finished REAL, error TEXT,
               result TEXT, updated REAL""",
    "runs": """name TEXT PRIMARY KEY, job_key TEXT NOT NULL, task TEXT, method TEXT, lr REAL, replicate INTEGER,
               hpo INTEGER, primary_metric TEXT, validation_best REAL, best_step INTEGER, steps INTEGER,
               path TEXT""",
    "metrics": """run TEXT, split TEXT, metric TEXT, value REAL, job_key TEXT NOT NULL,
                  PRIMARY KEY (run, split, metric)""",
    "predictions": """run TEXT, example_id TEXT, record TEXT, job_key TEXT NOT NULL,
                      PRIMARY KEY (run, example_id)""",
    "drift": """task TEXT, run TEXT, method TEXT, replicate INTEGER, probe TEXT, pooling TEXT, drift REAL, row TEXT,
                job_key TEXT NOT NULL, PRIMARY KEY (task, run, probe, pooling)""",
    "weights": """task TEXT, label TEXT, run TEXT, layer INTEGER, metric TEXT, value REAL, job_key TEXT NOT NULL,
                  PRIMARY KEY (task, label, layer, metric)""",
    "serving": """job_key TEXT NOT NULL, idx INTEGER, backend TEXT, scenario TEXT, batch_size INTEGER,
                  output_mode TEXT, row TEXT, PRIMARY KEY (job_key, idx)""",
}

def _columns(spec: str) -> list[str]:
    """Column names of a table spec (everything before the PRIMARY KEY clause)."""
    body = spec.split("PRIMARY KEY (")[0]
    return [part.split()[0] for part in body.split(",") if part.strip()]


COLUMNS = {table: _columns(spec) for table, spec in SCHEMA.items()}


def _json(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


class ResultsStore:
    """A connection to the study database; one per process (SQLite connections are not shared)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write opens BEGIN IMMEDIATE itself.
        self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._retry_locked(lambda: self.conn.execute("PRAGMA journal_mode = WAL"))
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL keeps it consistent
        with self.transaction() as tx:
            for table, spec in SCHEMA.items():
                tx.execute(f"CREATE TABLE IF NOT EXISTS {table} ({spec})")
            tx.execute("CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name)")

    @classmethod
    def for_study(cls, out_dir: str | Path) -> "ResultsStore":
        return cls(Path(out_dir) / DB_NAME)

    @staticmethod
    def _retry_locked(fn, attempts: int = 50):
        # Switching to WAL needs a moment of exclusive access; when several processes open a fresh
        # database at once, one can see "locked" despite the busy timeout. Retry briefly.
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or i == attempts - 1:
                    raise
                time.sleep(0.05 * (i + 1))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._retry_locked(lambda: self.conn.execute("BEGIN IMMEDIATE"))
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------------------

    def record_job(self, job, status: str, outcome: dict | None = None) -> None:
        """Upsert the job's row (by key). ``job`` is a ``dag.Job``; ``outcome`` from ``runner.run_job``."""
        o = outcome or {}
        row = {"key": job.key, "name": job.name, "kind": job.kind, "params": _json(job.params), "role": job.role,
               "status": status, "node": o.get("node"), "attempts": o.get("attempt"), "started": o.get("started"),
               "finished": o.get("finished"), "error": o.get("error"), "result": _json(o.get("result")),
               "updated": time.time()}
        with self.transaction() as tx:
            tx.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                       list(row.values()))

    def replace_rows(self, table: str, job_key: str, rows: Iterable[dict]) -> int:
        """Replace every row of ``table`` that came from ``job_key`` by ``rows``, atomically. Returns the count."""
        cols = COLUMNS[table]
        values = [[r.get(c) if c != "job_key" else job_key for c in cols] for r in rows]
        with self.transaction() as tx:
            tx.execute(f"DELETE FROM {table} WHERE job_key = ?", (job_key,))
            tx.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           values)
        return len(values)

    # -- reads ----------------------------------------------------------------------------------------------

    def query(self, sql: str, params: Iterable = ()) -> list[dict]:
        cur = self.conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def job_status(self, key: str) -> str | None:
        rows = self.query("SELECT status FROM jobs WHERE key = ?", (key,))
        return rows[0]["status"] if rows else None

    def count(self, table: str) -> int:
        return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
