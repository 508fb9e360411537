"""Child processes of the embedded mode: the Celery worker, supervised and restarted if it dies.

The worker dies with its supervisor: Linux sends it SIGTERM (a warm shutdown) when the process
that started it dies, even by SIGKILL. One supervisor per data directory: ``ServeLock`` holds an
fcntl lock for the supervisor's life, and the worker's pid is recorded beside it so that the next
supervisor can reap a worker that outlived its parent anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

from vidmem.settings import Settings

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOCK_NAME = "serve.lock"
WORKER_PID_NAME = "worker.pid"


class AlreadyServing(RuntimeError):
    """Another live ``vidmem serve`` holds the data directory."""


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when its parent dies.

    prctl is looked up here, in the parent: between fork and exec the child only calls it (no
    import, no allocation, no lock). The kernel ties the signal to the thread that forked, so a
    spawning thread must outlive its child (the watcher thread does). A parent that died before
    the call leaves the child already orphaned: it exits at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_signal


def exit_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """For a Python child started by spawn (a pool initializer): the kernel sends ``signum`` to it when
    ``parent_pid`` dies, even by SIGKILL; a parent that died already makes it exit at once. (After exec the
    child may import and allocate, unlike ``parent_death_signal``'s fork-time hook.)"""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class ServeLock:
    """One ``vidmem serve`` per data directory; a worker left behind by a killed one is reaped.

    The lock is an fcntl lock on ``serve.lock`` (the kernel releases it when the holder dies, so
    a stale file never blocks); the file also names the holder's pid for the error message.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``AlreadyServing`` naming the live holder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyServing(
                f"another vidmem serve (pid {holder}) is running on data dir {self.data_dir}; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None


def is_our_worker(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a ``vidmem worker`` on this data directory (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"vidmem" not in argv or b"worker" not in argv:
        return False
    return f"VIDMEM_DATA_DIR={data_dir}".encode() in environ


def reap_orphan_worker(data_dir: Path, timeout: float = 15.0) -> int | None:
    """Stop the worker a killed supervisor left on ``data_dir``; its pid, or None when there was none.

    SIGTERM first (the current task finishes, like any shutdown), SIGKILL after ``timeout``.
    Call it holding ``ServeLock``: then no live supervisor owns that worker.
    """
    pid_path = data_dir / WORKER_PID_NAME
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    pid_path.unlink(missing_ok=True)
    if not is_our_worker(pid, data_dir):
        return None
    log.warning("stopping worker %d left running by an earlier vidmem serve", pid)
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_our_worker(pid, data_dir):
        time.sleep(0.1)
    if is_our_worker(pid, data_dir):
        _signal(pid, signal.SIGKILL)
    return pid


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class RotatingStdLog(RotatingFileHandler):
    """A size-rotated log file that also receives the process's own stdout and stderr (fds 1, 2).

    Celery writes some lines (e.g. "Warm shutdown") straight to fd 1, and a crash writes to fd 2;
    pointing both at the current file after every rollover keeps all of it in ``worker.log`` and
    bounded: ``log_max_bytes`` per file, ``log_backups`` old files (``worker.log.1`` ...).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._redirect()

    def _redirect(self) -> None:
        if self.stream is None:
            return
        for std in (sys.stdout, sys.stderr):
            std.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        super().doRollover()
        self._redirect()


class WorkerProcess:
    """``python -m vidmem worker`` with the same settings; restarted when it dies unexpectedly.

    The worker logs to a file (a pipe nobody reads would block it once full).
    """

    def __init__(self, settings: Settings, on_restart: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_restart = on_restart
        self.log_path: Path = settings.data_dir / "worker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env()}
        # The child rotates this file itself (``--log-file``); the parent's copy is closed at once so
        # that a rotated-away file is not held open here.
        with open(self.log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vidmem", "worker", "--log-file", str(self.log_path)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=parent_death_signal(),  # noqa: PLW1509 - only a prctl call, resolved beforehand
            )
        (self.settings.data_dir / WORKER_PID_NAME).write_text(f"{proc.pid}\n")
        return proc

    def start(self, wait_ready: float = 180.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = self._spawn()
        self._wait_ready(offset, wait_ready)
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    def _wait_ready(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"the worker exited at start; see {self.log_path}")
            with open(self.log_path, "rb") as f:
                f.seek(offset if os.fstat(f.fileno()).st_size >= offset else 0)  # rotated meanwhile: all of it
                if b"ready." in f.read():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the worker did not start within {timeout:.0f} s; see {self.log_path}")

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if self._proc is not None and self._proc.poll() is not None:
                log.warning("worker exited with %s; restarting", self._proc.returncode)
                self.restarts += 1
                self._proc = self._spawn()
                if self.on_restart:
                    self.on_restart()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()  # warm shutdown: the current task finishes
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        (self.settings.data_dir / WORKER_PID_NAME).unlink(missing_ok=True)
