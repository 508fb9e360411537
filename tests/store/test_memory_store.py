"""The memory store's compare-and-set keeps one writer per version, locally and on Redis."""

from __future__ import annotations

import pytest

from store.memory_store import LocalMemoryStore, MemoryRecord, RedisMemoryStore


@pytest.fixture(params=["local", "redis"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "local":
        return LocalMemoryStore(tmp_path / "memory")
    return RedisMemoryStore(request.getfixturevalue("redis_client"))


def test_load_when_stream_is_unknown_returns_none(store):
    assert store.load("nope") is None


def test_save_when_version_matches_stores_the_record(store):
    record = MemoryRecord(version=1, last_seq=0, memory=b"m" * 10, state=b"s", tokens=5)

    assert store.save("s1", record, expected_version=0)

    assert store.load("s1") == record


def test_size_when_saved_reports_version_tokens_and_bytes_without_loading(store):
    assert store.size("s1") is None

    store.save("s1", MemoryRecord(version=1, last_seq=0, memory=b"m" * 10, state=b"s", tokens=5), expected_version=0)

    size = store.size("s1")
    assert (size.version, size.tokens, size.nbytes) == (1, 5, 10)


def test_save_when_another_writer_won_is_refused(store):
    store.save("s1", MemoryRecord(1, 0, b"a", b"", 1), expected_version=0)

    lost = store.save("s1", MemoryRecord(1, 0, b"b", b"", 1), expected_version=0)

    assert not lost, "a stale writer must not overwrite a newer memory"
    assert store.load("s1").memory == b"a"
