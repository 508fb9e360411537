"""SQLite writers queue for the write lock (store.db.WriteQueue) instead of polling SQLite's busy handler."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from store.db import make_engine

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from sqlalchemy import text
    from store.db import make_engine
    engine = make_engine("sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (-1)"))
        print("holding", flush=True)
        time.sleep({hold_s})
""")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "queue.sqlite3"
    with make_engine(f"sqlite:///{path}").begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return path


def _hold_in_another_process(path: Path, hold_s: float) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=root, path=path, hold_s=hold_s)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def _lock_is_free(path: Path) -> bool:
    with open(f"{path}.write-lock", "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(probe, fcntl.LOCK_UN)
        return True


def test_write_when_another_process_writes_then_waits_its_turn_and_succeeds(database: Path) -> None:
    child = _hold_in_another_process(database, hold_s=0.4)
    engine = make_engine(f"sqlite:///{database}", busy_timeout_s=5.0)
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    waited = time.monotonic() - started
    assert child.wait(10) == 0
    assert 0.2 < waited < 2.0, f"waited {waited:.2f} s"
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT x FROM t")).scalars()) == [-1, 1]


def test_write_when_the_lock_is_held_past_the_busy_timeout_then_fails_as_sqlite_would(database: Path) -> None:
    child = _hold_in_another_process(database, hold_s=1.5)
    engine = make_engine(f"sqlite:///{database}", busy_timeout_s=0.3)
    with pytest.raises(Exception, match="database is locked"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert child.wait(10) == 0
    with engine.begin() as conn:  # the queue is usable again: the failed wait left nothing held
        conn.execute(text("INSERT INTO t VALUES (2)"))


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_transaction_end_when_committed_or_rolled_back_then_the_next_writer_gets_the_lock(
    database: Path, end: str,
) -> None:
    engine = make_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t"))
        assert _lock_is_free(database), "reads do not queue"
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert not _lock_is_free(database)
        getattr(conn, end)()
        assert _lock_is_free(database)


def test_writes_when_threads_write_at_once_and_commit_elsewhere_then_all_land(database: Path) -> None:
    engine = make_engine(f"sqlite:///{database}", busy_timeout_s=10.0)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(50):
                conn = engine.connect()
                conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": worker * 1000 + i})
                # FastAPI may run a route and its session's commit on different pool threads
                finisher = threading.Thread(target=lambda c=conn: (c.commit(), c.close()))
                finisher.start()
                finisher.join()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT x) FROM t")).scalar() == 300
