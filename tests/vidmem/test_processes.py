"""The supervisor's guards: one serve per data directory, orphaned workers reaped, children die with it.

Real processes stand in for the worker: a sleeping Python whose command line and environment
look like ``vidmem worker`` on a given data directory (or not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidmem.processes import (
    WORKER_PID_NAME,
    AlreadyServing,
    ServeLock,
    is_our_worker,
    parent_death_signal,
    reap_orphan_worker,
)

pytestmark = pytest.mark.timeout(60)

SLEEPER = "import time; time.sleep(120)"


def fake_worker(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """A process that looks like ``python -m vidmem worker`` on ``data_dir``."""
    env = {**os.environ, "VIDMEM_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-c", SLEEPER, *args], env=env)


def wait_visible(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """Until the child has exec'd (its /proc entries show its own command line)."""
    deadline = time.monotonic() + 10
    while not is_our_worker(proc.pid, data_dir) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_reap_orphan_worker_when_recorded_pid_is_our_worker_stops_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    orphan = fake_worker(data, "vidmem", "worker")
    wait_visible(orphan, data)
    (data / WORKER_PID_NAME).write_text(f"{orphan.pid}\n")

    reaped = reap_orphan_worker(data, timeout=5)

    assert reaped == orphan.pid and orphan.wait(5) == -signal.SIGTERM  # a warm shutdown first
    assert not (data / WORKER_PID_NAME).exists()


@pytest.mark.parametrize("args, env_dir", [(("vidmem", "worker"), "other"), (("something", "else"), "data")])
def test_reap_orphan_worker_when_recorded_pid_is_not_our_worker_leaves_it_running(tmp_path, args, env_dir):
    data = tmp_path / "data"
    data.mkdir()
    bystander = fake_worker(tmp_path / env_dir, *args)  # another deployment's worker, or a reused pid
    try:
        time.sleep(0.3)
        (data / WORKER_PID_NAME).write_text(f"{bystander.pid}\n")

        reaped = reap_orphan_worker(data, timeout=5)
        time.sleep(0.3)
        still_running = bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    assert reaped is None and still_running
    assert not (data / WORKER_PID_NAME).exists()  # a stale record is dropped


def test_serve_lock_when_held_refuses_a_second_holder_naming_the_first(tmp_path):
    first, second = ServeLock(tmp_path / "data"), ServeLock(tmp_path / "data")
    first.acquire()
    try:
        with pytest.raises(AlreadyServing) as refused:
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again once released
    second.release()

    assert str(refused.value) == (
        f"another vidmem serve (pid {os.getpid()}) is running on data dir {tmp_path / 'data'}; stop it first"
    )


def test_child_when_its_parent_is_killed_gets_the_parent_death_signal(tmp_path):
    # a middle process spawns a child with the preexec_fn, prints the child's pid, then is SIGKILLed
    script = (
        "import subprocess, sys, time\n"
        "from vidmem.processes import parent_death_signal\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], preexec_fn=parent_death_signal())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    child_pid = int(middle.stdout.readline())  # type: ignore[union-attr]
    assert Path(f"/proc/{child_pid}").exists()

    middle.send_signal(signal.SIGKILL)
    middle.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not _alive(child_pid)
    assert parent_death_signal() is not None


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
