"""GET /streams/{id}/memory and /frame.jpg, over memories the worker's own code builds (issue 18).

Real parts: the tiny random model encoding random frames, stage 1 and the rolling memory through
``workers.services.apply_chunk`` (the code a worker runs per chunk), the API on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from store import repo
from store.db import session_scope
from tests.api.databases import client_with_default_key, new_stream, runtime_on_each_database  # noqa: F401 - fixtures
from tests.workers.cluster import chunk_frames, record_chunks
from workers import latest_frame, services
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(180)


def apply(runtime: Runtime, stream_id: str, seqs: range) -> None:
    assert [services.apply_chunk(runtime, stream_id, seq) for seq in seqs] == ["applied"] * len(seqs)


def test_memory_when_nothing_applied_yet_is_empty_against_the_streams_budget(client, runtime):
    stream_id = new_stream(client, runtime, settings={"memory_budget": 77})

    body = client.get(f"/streams/{stream_id}/memory").json()

    assert body["budget"] == 77 and body["budget_held"] is None
    assert (body["tokens"], body["bytes"], body["chunks_applied"], body["span_seconds"]) == (0, 0, 0, 0.0)
    assert body["timeline"] == [] and body["tokens_per_minute"] is None and body["first_seconds"] is None


def test_memory_when_chunks_applied_shows_size_span_rate_and_a_timeline_that_adds_up(client, runtime):
    stream_id = new_stream(client, runtime, settings={"memory_budget": 60})
    record_chunks(runtime, stream_id, chunk_frames(seed=1, n=6))  # 6 chunks of 2 s, 4 frames each
    apply(runtime, stream_id, range(6))
    epoch = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with session_scope(runtime.sessions) as session:
        repo.set_media_epoch(session, stream_id=stream_id, epoch=epoch)

    body = client.get(f"/streams/{stream_id}/memory").json()

    memory = services.StreamMemory.load(runtime, stream_id).memory
    assert body["tokens"] == memory.num_tokens and 0 < body["tokens"] <= 60  # the stream's budget, not 256
    assert body["budget"] == body["budget_held"] == 60 and body["version"] == 6 and body["chunks_applied"] == 6
    assert body["bytes"] == runtime.memory_store.size(stream_id).nbytes
    assert body["tokens_merged"] + body["tokens_evicted"] == body["tokens_seen"] - body["tokens"]
    assert body["first_seconds"] == pytest.approx(float(memory.tokens.side["t_start"].min()))
    assert body["last_seconds"] == pytest.approx(float(memory.tokens.time.max()))
    assert body["span_seconds"] == pytest.approx(body["last_seconds"] - body["first_seconds"])
    assert body["tokens_per_minute"] == pytest.approx(body["tokens"] / (body["span_seconds"] / 60))
    assert datetime.fromisoformat(body["last_time"]) == epoch + timedelta(seconds=body["last_seconds"])
    timeline = body["timeline"]
    assert [c["seq"] for c in timeline] == list(range(6))
    assert [(c["t_start"], c["t_end"]) for c in timeline] == [(2.0 * i, 2.0 * i + 2) for i in range(6)]
    assert sum(c["tokens_now"] for c in timeline) + body["tokens_before_timeline"] == body["tokens"]
    assert body["tokens_before_timeline"] == 0
    assert all(c["tokens_out"] > 0 and c["tokens_in"] >= c["tokens_out"] for c in timeline)
    # the newest chunk's tokens are all still held (nothing after it to merge them into)
    assert timeline[-1]["tokens_now"] == timeline[-1]["tokens_out"]

    limited = client.get(f"/streams/{stream_id}/memory", params={"limit": 2}).json()
    assert [c["seq"] for c in limited["timeline"]] == [4, 5]
    assert limited["tokens_before_timeline"] == body["tokens"] - sum(c["tokens_now"] for c in limited["timeline"])


@pytest.mark.parametrize("runtime", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("params", "field"), [({"limit": 0}, "query.limit"), ({"limit": 5001}, "query.limit"),
                                               ({"limit": "x"}, "query.limit")])
def test_memory_when_limit_out_of_range_returns_422_naming_it(client, runtime, params, field):
    stream_id = new_stream(client, runtime)

    response = client.get(f"/streams/{stream_id}/memory", params=params)

    assert response.status_code == 422 and response.json()["field"] == field, response.text


def test_memory_and_frame_when_stream_unknown_return_404(client):
    assert client.get("/streams/nope/memory").status_code == 404
    assert client.get("/streams/nope/frame.jpg").status_code == 404


def test_frame_when_ingest_kept_one_returns_the_newest_as_a_small_jpeg(client, runtime):
    stream_id = new_stream(client, runtime)
    assert client.get(f"/streams/{stream_id}/frame.jpg").status_code == 404  # nothing sampled yet

    red = np.zeros((480, 640, 3), np.uint8)
    red[..., 0] = 255
    latest_frame.keep(runtime, stream_id, np.zeros((480, 640, 3), np.uint8))
    latest_frame.keep(runtime, stream_id, red)  # replaces the first: one frame per stream
    response = client.get(f"/streams/{stream_id}/frame.jpg")

    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (latest_frame.SIZE, latest_frame.SIZE * 3 // 4)
    r, g, b = image.convert("RGB").getpixel((10, 10))
    assert r > 200 and g < 40 and b < 40
    assert len(list(latest_frame.store(runtime).entries())) == 1
