"""Frame blobs round-trip and expire."""

from __future__ import annotations

import os
import time

import numpy as np

from store.blobs import LocalBlobStore, RedisBlobStore, pack_frames, unpack_frames


def test_pack_frames_round_trips_images_timestamps_and_motion():
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    timestamps = np.array([0.0, 0.5, 1.0])
    motion = np.ones((3, 2, 2), np.float32)

    got_images, got_ts, got_motion = unpack_frames(pack_frames(images, timestamps, motion))

    assert np.array_equal(got_images, images) and np.array_equal(got_ts, timestamps)
    assert got_motion is not None and np.array_equal(got_motion, motion)


def test_local_blob_when_older_than_ttl_is_gone(tmp_path):
    blobs = LocalBlobStore(tmp_path, ttl_seconds=60)
    blobs.put("k", b"data")
    old = time.time() - 120
    os.utime(tmp_path / "k", (old, old))

    assert blobs.get("k") is None
    assert blobs.sweep() == 1


def test_redis_blob_round_trips_with_ttl(redis_client):
    blobs = RedisBlobStore(redis_client, ttl_seconds=30)

    blobs.put("k", b"data")

    assert blobs.get("k") == b"data"
    assert 0 < redis_client.ttl("vidmem:blob:k") <= 30


def test_local_blob_entries_when_listed_give_every_key_with_its_age(tmp_path):
    blobs = LocalBlobStore(tmp_path, ttl_seconds=60)
    blobs.put("old", b"a")
    blobs.put("new", b"b")
    old = time.time() - 30
    os.utime(tmp_path / "old", (old, old))

    ages = dict(blobs.entries())

    assert set(ages) == {"old", "new"}
    assert 29 <= ages["old"] <= 40 and 0 <= ages["new"] < 5


def test_redis_blob_entries_when_listed_give_the_age_the_ttl_has_used(redis_client):
    blobs = RedisBlobStore(redis_client, ttl_seconds=100)
    blobs.put("k", b"data")
    redis_client.expire("vidmem:blob:k", 40)  # as if written 60 s ago
    redis_client.set("other:key", b"not a blob")

    ages = dict(blobs.entries())

    assert list(ages) == ["k"] and 59 <= ages["k"] <= 61
    assert blobs.sweep() == 0 and blobs.get("k") == b"data", "Redis expires blobs by itself"
