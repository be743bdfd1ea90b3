"""The SQLite state DB's write queue between processes (``--workers N``, issue 16): a fall
alert's transaction in one process goes ahead of telemetry transactions waiting in others,
and waits only for the one already running. Real SQLite files and real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fallwatch.gateway.state import StateStore
from fallwatch.testing.publisher import wait_until

WRITER = """
import sys
from fallwatch.gateway.state import StateStore
from fallwatch.testing.publisher import wait_until
st = StateStore(sys.argv[1])
print("ready", flush=True)
with st._tx(urgent=sys.argv[2] == "1") as cur:
    cur.execute("INSERT INTO t (name) VALUES (?)", (sys.argv[3],))
"""


def _writer(db: Path, urgent: bool, name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "1" if urgent else "0", name],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_an_urgent_writer_in_another_process_goes_ahead_of_a_waiting_ordinary_one(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    st = StateStore(str(db))
    with st._tx() as cur:
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
    assert st.gate is not None and st.gate.urgent_waiting == 0
    with st._tx() as cur:  # this process holds the write lock, as a worker committing telemetry
        cur.execute("INSERT INTO t (name) VALUES ('holder')")
        ordinary = _writer(db, False, "telemetry")
        time.sleep(0.3)  # let it queue first (if it has not, the alert is first anyway)
        urgent = _writer(db, True, "fall")
        # the alert's process announces itself; a bulk commit here would see it and yield
        assert wait_until(lambda: st.gate is not None and st.gate.urgent_waiting == 1, 30.0)
    assert urgent.wait(30) == 0 and ordinary.wait(30) == 0
    rows = [r["name"] for r in st._select("SELECT name FROM t ORDER BY id")]
    assert rows == ["holder", "fall", "telemetry"]
    assert st.gate.urgent_waiting == 0


def test_ordinary_writers_of_several_processes_all_get_through(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    st = StateStore(str(db))
    with st._tx() as cur:
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
    with st._tx() as cur:
        cur.execute("INSERT INTO t (name) VALUES ('holder')")
        procs = [_writer(db, i % 3 == 0, f"w{i}") for i in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    names = sorted(r["name"] for r in st._select("SELECT name FROM t"))
    assert names == sorted(["holder", *(f"w{i}" for i in range(6))])


def test_lock_files_it_cannot_open_leave_the_store_working(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Lock files left by another user (a CLI run as root) must not stop the gateway: it
    warns and falls back to SQLite's own lock, which is slower between processes, never wrong."""
    db = tmp_path / "state.sqlite"
    (tmp_path / "state.sqlite-writer.lock").mkdir()  # cannot be opened as a file, whoever runs the test
    st = StateStore(str(db))
    assert "no cross-process write queue" in caplog.text
    with st._tx(urgent=True) as cur:
        cur.execute("CREATE TABLE t (name TEXT)")
        cur.execute("INSERT INTO t VALUES ('fall')")
    assert st._select("SELECT name FROM t") == [{"name": "fall"}]


HOLDER = """
import sys
from fallwatch.gateway.state import StateStore
st = StateStore(sys.argv[1])
with st._tx() as cur:
    cur.execute("INSERT INTO t (name) VALUES ('other worker')")
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_an_urgent_writer_goes_ahead_of_its_own_process_s_writer_already_queued_on_the_file(tmp_path: Path) -> None:
    """Found in review: a thread of this process already waiting for another process's
    transaction must not take its turn before an urgent writer of this process that came
    later (the alert thread and the bulk thread share one store in every worker)."""
    import threading

    db = tmp_path / "state.sqlite"
    st = StateStore(str(db))
    with st._tx() as cur:
        cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)")
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdin is not None and other.stdout.readline().strip() == "holding"

    def write(name: str, urgent: bool) -> None:
        with st._tx(urgent=urgent) as cur:
            cur.execute("INSERT INTO t (name) VALUES (?)", (name,))

    ordinary = threading.Thread(target=write, args=("telemetry", False))
    ordinary.start()
    # it owns the gate and waits on the file
    assert wait_until(lambda: st.gate is not None and st.gate._owner is not None, 30.0)
    urgent = threading.Thread(target=write, args=("fall", True))
    urgent.start()
    assert wait_until(lambda: st.gate is not None and st.gate._urgent_waiting == 1, 30.0)
    other.stdin.write("go\n")
    other.stdin.flush()
    assert other.wait(30) == 0
    urgent.join(30)
    ordinary.join(30)
    assert [r["name"] for r in st._select("SELECT name FROM t ORDER BY id")] == ["other worker", "fall", "telemetry"]


def test_closing_the_store_closes_its_lock_files_and_it_still_works_after(tmp_path: Path) -> None:
    import os

    st = StateStore(str(tmp_path / "state.sqlite"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        s = StateStore(str(tmp_path / "state.sqlite"))
        s.close()
    assert len(os.listdir("/proc/self/fd")) <= before  # nothing left open per store
    st.close()
    with st._tx(urgent=True) as cur:  # used again after close: connections and lock files reopen
        cur.execute("CREATE TABLE IF NOT EXISTS t (name TEXT)")
