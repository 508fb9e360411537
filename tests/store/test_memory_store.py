"""The memory store's compare-and-set keeps one writer per version, locally and on Redis."""

from __future__ import annotations

import json
import pickle

import pytest
import safetensors.numpy

from store.memory_store import RECORD_FORMAT, LocalMemoryStore, MemoryFormatError, MemoryRecord, RedisMemoryStore


class _Planted:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


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


def test_save_when_local_then_the_file_is_safetensors_and_the_sidecar_json(tmp_path):
    store = LocalMemoryStore(tmp_path / "memory")

    store.save("s1", MemoryRecord(3, 2, b"mem", b"st", 7), expected_version=0)

    data = (tmp_path / "memory" / "s1.mem").read_bytes()
    blobs = safetensors.numpy.load(data)
    assert blobs["memory"].tobytes() == b"mem" and blobs["state"].tobytes() == b"st"
    assert not data.startswith(b"\x80"), "the record must not be a pickle"
    assert json.loads((tmp_path / "memory" / "s1.size").read_text()) == {"version": 3, "tokens": 7, "nbytes": 3}


def test_save_when_redis_then_the_hash_holds_the_format_and_plain_fields(redis_client):
    RedisMemoryStore(redis_client).save("s1", MemoryRecord(3, 2, b"mem", b"st", 7), expected_version=0)

    raw = redis_client.hgetall("vidmem:memory:s1")

    assert raw == {b"format": str(RECORD_FORMAT).encode(), b"version": b"3", b"last_seq": b"2", b"memory": b"mem",
                   b"state": b"st", b"tokens": b"7"}


def test_load_when_local_file_is_a_planted_pickle_refuses_without_running_it(tmp_path):
    # given a memory file replaced by a payload whose unpickling would create a marker file
    store, marker = LocalMemoryStore(tmp_path / "memory"), tmp_path / "ran"
    store.save("s1", MemoryRecord(1, 0, b"m", b"s", 1), expected_version=0)
    planted = pickle.dumps(_Planted(str(marker)))
    (tmp_path / "memory" / "s1.mem").write_bytes(planted)
    # when it is loaded, then it is refused with the reason, nothing ran and nothing was rewritten
    with pytest.raises(MemoryFormatError, match="memory format changed: the stored memory of stream s1 .*pickled"):
        store.load("s1")
    assert not marker.exists(), "the planted payload was executed"
    assert (tmp_path / "memory" / "s1.mem").read_bytes() == planted


def test_load_when_local_file_is_a_pickled_record_of_an_older_vidmem_says_the_format_changed(tmp_path):
    store = LocalMemoryStore(tmp_path / "memory")
    (tmp_path / "memory" / "s1.mem").write_bytes(pickle.dumps(MemoryRecord(1, 0, b"m", b"s", 1)))

    with pytest.raises(MemoryFormatError, match="not unpickled or migrated. Delete it to start"):
        store.load("s1")


def test_load_when_local_file_is_corrupt_raises_a_clear_error(tmp_path):
    store = LocalMemoryStore(tmp_path / "memory")
    store.save("s1", MemoryRecord(1, 0, b"m" * 100, b"s", 1), expected_version=0)
    path = tmp_path / "memory" / "s1.mem"
    path.write_bytes(path.read_bytes()[:-50])

    with pytest.raises(MemoryFormatError, match="stored memory of stream s1 is corrupt or unknown"):
        store.load("s1")


def test_load_when_redis_hash_is_of_an_older_vidmem_refuses_without_running_it(redis_client, tmp_path):
    # given a hash as older versions wrote it (no "format"), its state a planted pickle
    marker = tmp_path / "ran"
    redis_client.hset("vidmem:memory:s1", mapping={
        "version": 1, "last_seq": 0, "memory": b"m", "state": pickle.dumps(_Planted(str(marker))), "tokens": 1,
    })
    # when it is loaded, then it is refused with the reason and nothing ran
    with pytest.raises(MemoryFormatError, match="memory format changed: .*a Redis hash without 'format'"):
        RedisMemoryStore(redis_client).load("s1")
    assert not marker.exists(), "the planted payload was executed"


def test_load_when_redis_hash_has_an_unknown_format_or_bad_fields_raises_a_clear_error(redis_client):
    store = RedisMemoryStore(redis_client)
    store.save("s1", MemoryRecord(1, 0, b"m", b"s", 1), expected_version=0)
    store.save("s2", MemoryRecord(1, 0, b"m", b"s", 1), expected_version=0)
    redis_client.hset("vidmem:memory:s1", "format", "99")
    redis_client.hset("vidmem:memory:s2", "version", "one")

    with pytest.raises(MemoryFormatError, match="stored memory of stream s1 has an unknown format: b'99'"):
        store.load("s1")
    with pytest.raises(MemoryFormatError, match="stored memory of stream s2 is malformed"):
        store.load("s2")
