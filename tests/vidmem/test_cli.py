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
