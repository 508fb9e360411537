"""`vidmem keys create/list/revoke` on the configured database, SQLite and PostgreSQL (issue 18)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store import db
from tests.api_keys import bearer
from tests.conftest import make_settings
from tests.vidmem.test_cli import run_vidmem
from workers.app import create_celery
from workers.runtime import Runtime


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Variables naming the database: embedded SQLite under a data folder, or a migrated PostgreSQL."""
    env = {"VIDMEM_DATA_DIR": str(tmp_path / "data")}
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        db.upgrade(url)
        env["VIDMEM_DATABASE_URL"] = url
    return env


def api_client(env: dict[str, str], tmp_path) -> TestClient:  # type: ignore[no-untyped-def]
    """The API on the database the CLI wrote to."""
    settings = make_settings(tmp_path)
    settings.data_dir = tmp_path / "data"
    settings.database_url = env.get("VIDMEM_DATABASE_URL")
    create_celery(settings)
    return TestClient(create_app(Runtime(settings, auto_upgrade=True)))


def test_keys_create_list_revoke_when_run_from_the_cli_key_works_until_revoked(env, tmp_path):
    created = run_vidmem("keys", "create", "--tenant", "acme", "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    other = run_vidmem("keys", "create", "--tenant", "globex", env=env)
    assert other.returncode == 0, other.stderr

    with api_client(env, tmp_path) as client:
        before = client.get("/streams", headers=bearer(token))
        listed = run_vidmem("keys", "list", env=env)
        acme_only = run_vidmem("keys", "list", "--tenant", "acme", env=env)
        revoked = run_vidmem("keys", "revoke", key_id, env=env)
        after = client.get("/streams", headers=bearer(token))
        listed_after = run_vidmem("keys", "list", "--tenant", "acme", env=env)

    assert token.startswith(f"vm_{key_id}_") and len(token) > 50, token
    assert "shown only this once" in created.stderr
    assert before.status_code == 200, before.text
    assert listed.returncode == 0 and {"acme", "globex"} <= set(listed.stdout.split()), listed.stdout
    assert key_id in acme_only.stdout and "globex" not in acme_only.stdout, acme_only.stdout
    secret = token.split("_", 2)[2]
    assert secret not in listed.stdout + listed.stderr + acme_only.stdout, "a secret was listed"
    assert revoked.returncode == 0 and key_id in revoked.stdout, revoked.stderr
    assert after.status_code == 401 and after.headers["www-authenticate"] == "Bearer"
    row = next(line for line in listed_after.stdout.splitlines() if line.startswith(key_id))
    assert row.split("\t")[-1] != "-", row  # the revoked column shows when


def test_keys_when_input_is_bad_exit_non_zero_with_the_reason(env):
    bad_tenant = run_vidmem("keys", "create", "--tenant", "a b", env=env)
    missing_tenant = run_vidmem("keys", "create", env=env)
    unknown = run_vidmem("keys", "revoke", "0123456789abcdef", env=env)

    assert bad_tenant.returncode == 2 and "tenant 'a b' is not valid" in bad_tenant.stderr
    assert missing_tenant.returncode == 2 and "--tenant" in missing_tenant.stderr
    assert unknown.returncode == 1 and "'0123456789abcdef' not found" in unknown.stderr


def test_api_when_open_mode_on_a_public_address_refuses_to_start(tmp_path):
    env = {"VIDMEM_DATA_DIR": str(tmp_path / "data"), "VIDMEM_AUTH": "open"}

    result = run_vidmem("api", "--host", "0.0.0.0", "--port", "1", env=env)

    assert result.returncode == 2
    assert "VIDMEM_AUTH=open" in result.stderr and "loopback" in result.stderr, result.stderr
