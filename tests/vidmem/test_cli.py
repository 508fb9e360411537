"""The command line refuses an un-migrated database and says which command fixes it."""

from __future__ import annotations

import os
import subprocess
import sys


def run_vidmem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vidmem", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=120,
    )


def test_db_check_when_postgres_is_not_migrated_names_vidmem_db_upgrade(postgres_url, tmp_path):
    env = {"VIDMEM_DATABASE_URL": postgres_url, "VIDMEM_DATA_DIR": str(tmp_path)}

    before = run_vidmem("db", "check", env=env)
    upgraded = run_vidmem("db", "upgrade", env=env)
    after = run_vidmem("db", "check", env=env)

    assert before.returncode == 2 and "vidmem db upgrade" in before.stderr
    assert upgraded.returncode == 0, upgraded.stderr
    assert after.returncode == 0 and "up to date" in after.stdout


def test_worker_when_postgres_is_not_migrated_refuses_to_start(postgres_url, tmp_path):
    env = {"VIDMEM_DATABASE_URL": postgres_url, "VIDMEM_DATA_DIR": str(tmp_path)}

    result = run_vidmem("worker", env=env)

    assert result.returncode == 2
    assert "vidmem db upgrade" in result.stderr


def test_setup_logging_when_a_line_or_traceback_quotes_a_camera_password_writes_it_redacted():
    import io
    import logging

    from vidmem.cli import RedactingFilter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("opening %s", "rtsp://admin:p@ss w0rd@192.0.2.7/live?token=s3cret")
        try:
            raise OSError("cannot open http://user:hunter2@198.51.100.4/x")
        except OSError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)

    text = out.getvalue()
    assert "rtsp://***@192.0.2.7/live?token=***" in text and "http://***@198.51.100.4/x" in text, text
    assert "p@ss" not in text and "s3cret" not in text and "hunter2" not in text, text
