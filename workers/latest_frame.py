"""The newest sampled frame of each stream as a small JPEG, for the web page and ``GET /streams/{id}/frame.jpg``.

The ingest keeps it as it submits each chunk (the chunk's last frame), one per stream under a key
of its own, so the store stays bounded however long a stream runs. It lives beside the frame
blobs but under its own prefix or folder: housekeeping sweeps chunk blobs by age and by pending
chunk and must not take these. It is kept a week (a stopped or ended stream still shows its last
picture) and deleted with its stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store.blobs import BlobStore, LocalBlobStore, RedisBlobStore
from workers.runtime import Runtime
from workers.thumbnails import jpeg_thumbnail

SIZE = 320  # pixels of the longer side: a card on the page, a few KB
KEEP_S = 7 * 24 * 3600
REDIS_PREFIX = "vidmem:frame:"


def store(rt: Runtime) -> BlobStore:
    """Where latest frames live: Redis when the deployment has one (any API host can read them), else files."""
    if rt.redis is not None:
        return RedisBlobStore(rt.redis, KEEP_S, prefix=REDIS_PREFIX)
    return LocalBlobStore(Path(rt.settings.data_dir) / "frames", KEEP_S)


def keep(rt: Runtime, stream_id: str, image: np.ndarray) -> None:
    """Replace the stream's latest frame with ``image`` (uint8 [H, W, 3] RGB)."""
    store(rt).put(f"{stream_id}.jpg", jpeg_thumbnail(image, SIZE))


def get(rt: Runtime, stream_id: str) -> bytes | None:
    return store(rt).get(f"{stream_id}.jpg")


def forget(rt: Runtime, stream_id: str) -> None:
    store(rt).delete(f"{stream_id}.jpg")
