"""Settings: embedded defaults, and a faithful hand-over to child processes."""

from __future__ import annotations

from vidmem.settings import Settings


def test_defaults_when_nothing_is_configured_are_embedded(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path)

    assert settings.embedded_broker and settings.is_embedded_db
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'vidmem.sqlite3'}"
    assert settings.store_redis_url is None


def test_to_env_when_read_back_gives_equal_settings(tmp_path, monkeypatch):
    settings = Settings(
        _env_file=None, data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/3",
        allowed_schemes=["rtsp"], memory_budget=123, stage2="adatp:ratio=0.25",
    )
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)

    assert Settings(_env_file=None) == settings
    assert Settings(_env_file=None).store_redis_url == "redis://127.0.0.1:6379/3"
