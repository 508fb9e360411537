"""worker.log is rotated by the worker itself, stdout and stderr included, and stays bounded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import logging, os, sys
    from pathlib import Path
    from vidmem.cli import setup_file_logging
    from vidmem.settings import Settings

    path = Path(sys.argv[1])
    setup_file_logging(path, Settings(_env_file=None, data_dir=path.parent, log_max_bytes=10_000, log_backups=2))
    for i in range(1500):
        logging.getLogger("celery").info("line %05d of a chatty worker", i)
    os.write(1, b"written to fd 1 as Celery does: worker: Warm shutdown (MainProcess)\\n")
    print("printed to stdout", flush=True)
    raise SystemExit("a crash message on stderr")
""")


def test_worker_log_when_it_outgrows_log_max_bytes_is_rotated_with_backups(tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:  # as the supervisor starts the worker: stdout and stderr on the file
        done = subprocess.run([sys.executable, "-c", CHILD, str(log)], stdout=out, stderr=subprocess.STDOUT,
                              timeout=60)

    files = sorted(p.name for p in tmp_path.iterdir())
    current = log.read_text()
    assert done.returncode == 1
    assert files == ["worker.log", "worker.log.1", "worker.log.2"], "log_backups=2 old files, no more"
    assert all((tmp_path / name).stat().st_size <= 10_000 for name in files)
    assert "line 01499" in current and "line 00000" not in current
    assert "worker: Warm shutdown (MainProcess)" in current, "fd 1 follows the rotation"
    assert "printed to stdout" in current and "a crash message on stderr" in current
