"""Child processes of the embedded mode: the Celery worker, supervised and restarted if it dies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vidmem.settings import Settings

log = logging.getLogger(__name__)


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
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        return subprocess.Popen(
            [sys.executable, "-m", "vidmem", "worker"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )

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
                f.seek(offset)
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
