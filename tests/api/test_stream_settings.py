"""Per-stream settings, PATCH, DELETE with an explicit history choice, and the stream list (issue 18).

Real parts: the API through its test client on SQLite and PostgreSQL, the compression registry.
How ingest and the worker use the settings: tests/workers/test_stream_settings_used.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from api.schemas import Error
from store import repo
from store.db import session_scope
from store.models import ChunkRecord, Question, Stream
from tests.api.databases import client_with_default_key, new_stream, runtime_on_each_database  # noqa: F401 - fixtures
from workers.runtime import Runtime

SETTINGS = {"sample_fps": 4.0, "chunk_seconds": 1.0, "stage1": "tome:ratio=0.5", "stage2": "recent",
            "memory_budget": 100, "llm_budget": 20}


def assert_error(response, status: int, field: str | None, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert Error.model_validate(body) and body["field"] == field, body
    for word in words:
        assert word in body["detail"], body


def count_rows(runtime: Runtime, model) -> int:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_create_when_settings_given_stores_them_and_shows_the_effective_values(client, runtime):
    stream_id = new_stream(client, runtime, settings={"sample_fps": 4.0, "stage1": " tome:ratio=0.5 "})

    body = client.get(f"/streams/{stream_id}").json()

    assert body["settings"] == {"sample_fps": 4.0, "chunk_seconds": None, "stage1": "tome:ratio=0.5", "stage2": None,
                                "memory_budget": None, "llm_budget": None}
    deployment = runtime.settings
    assert body["effective_settings"] == {
        "sample_fps": 4.0, "chunk_seconds": deployment.chunk_seconds, "stage1": "tome:ratio=0.5",
        "stage2": deployment.stage2, "memory_budget": deployment.memory_budget, "llm_budget": deployment.llm_budget,
    }
    assert body["media_epoch"] is None and body["deleted_at"] is None


BAD_SETTINGS = [
    ({"stage1": "nope"}, "body.settings.stage1", "unknown compression method 'nope'"),
    ({"stage1": "adatp"}, "body.settings.stage1", "not a stage-1 method"),
    ({"stage1": "uniform:ratio=2"}, "body.settings.stage1", "ratio must lie in [0, 1]"),
    ({"stage2": "uniform:bogus=1"}, "body.settings.stage2", "unknown parameter(s) bogus"),
    ({"stage2": "cacovid:policy_path=/etc/passwd"}, "body.settings.stage2", "set by the deployment"),
    ({"stage1": ""}, "body.settings.stage1", "at least 1"),
    ({"sample_fps": 0}, "body.settings.sample_fps", "greater than 0"),
    ({"sample_fps": "2"}, "body.settings.sample_fps", "valid number"),
    ({"chunk_seconds": float("inf")}, "body.settings.chunk_seconds", None),
    ({"memory_budget": 1.5}, "body.settings.memory_budget", "valid integer"),
    ({"llm_budget": True}, "body.settings.llm_budget", "valid integer"),
    ({"memory_budget": 10**9}, "body.settings.memory_budget", "less than or equal"),
    ({"sample_fps": 30, "chunk_seconds": 20}, "body.settings.chunk_seconds", "600 frames per chunk"),
    ({"fps": 2}, "body.settings.fps", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("runtime", ["sqlite"], indirect=True)  # schema and registry checks: no database SQL
@pytest.mark.parametrize(("bad", "field", "words"), BAD_SETTINGS)
def test_create_when_a_setting_is_invalid_returns_422_naming_it_and_stores_nothing(client, runtime, bad, field,
                                                                                     words):
    source = str(runtime.settings.file_dir / "clip.mp4")
    (runtime.settings.file_dir / "clip.mp4").write_bytes(b"x")
    if bad.get("chunk_seconds") == float("inf"):  # not JSON: sent as the literal a careless client would write
        text = f'{{"source": "{source}", "settings": {{"chunk_seconds": Infinity}}}}'
        response = client.post("/streams", content=text, headers={"content-type": "application/json"})
    else:
        response = client.post("/streams", json={"source": source, "settings": bad})

    assert_error(response, 422, field, *([words] if words else []))
    assert count_rows(runtime, Stream) == 0


def test_create_when_an_unknown_field_is_sent_returns_422_naming_it(client, runtime):
    (runtime.settings.file_dir / "clip.mp4").write_bytes(b"x")

    response = client.post("/streams", json={"source": str(runtime.settings.file_dir / "clip.mp4"), "fps": 3})

    assert_error(response, 422, "body.fps", "Extra inputs are not permitted")


def test_patch_when_name_and_some_settings_change_keeps_the_others_and_null_restores_the_default(client, runtime):
    stream_id = new_stream(client, runtime, settings=SETTINGS)

    changed = client.patch(f"/streams/{stream_id}", json={"name": "porch", "settings": {"llm_budget": 8,
                                                                                         "stage1": None}})

    assert changed.status_code == 200, changed.text
    body = client.get(f"/streams/{stream_id}").json()
    assert body["name"] == "porch"
    assert body["settings"] == {**SETTINGS, "llm_budget": 8, "stage1": None}
    assert body["effective_settings"]["stage1"] == runtime.settings.stage1
    with session_scope(runtime.sessions) as session:  # the row keeps only what the stream chose
        assert "stage1" not in repo.get_stream(session, stream_id).settings


@pytest.mark.parametrize("runtime", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("body", "field", "words"), [
    ({"sample_fps": 2}, "body.sample_fps", "Extra inputs"),
    ({"settings": {"stage2": "nope:x=1"}}, "body.settings.stage2", "unknown compression method"),
    ({"settings": {"chunk_seconds": 60}}, "body.settings.chunk_seconds", "frames per chunk"),
    ({"name": ""}, "body.name", "at least 1"),
    ({"name": "a\x00b"}, "body.name", "control character"),
])
def test_patch_when_input_is_invalid_returns_422_naming_the_field_and_changes_nothing(client, runtime, body, field,
                                                                                       words):
    stream_id = new_stream(client, runtime, settings={"sample_fps": 10.0})
    before = client.get(f"/streams/{stream_id}").json()

    assert_error(client.patch(f"/streams/{stream_id}", json=body), 422, field, words)
    assert client.get(f"/streams/{stream_id}").json()["settings"] == before["settings"]


def test_patch_when_stream_is_unknown_returns_404(client):
    assert_error(client.patch("/streams/nope", json={"name": "x"}), 404, None, "not found")


def test_delete_when_history_is_not_chosen_returns_422_and_deletes_nothing(client, runtime):
    stream_id = new_stream(client, runtime)

    assert_error(client.delete(f"/streams/{stream_id}"), 422, "query.history", "query.history")
    assert_error(client.delete(f"/streams/{stream_id}", params={"history": "maybe"}), 422, "query.history")
    assert client.get(f"/streams/{stream_id}").json()["deleted_at"] is None


def test_delete_when_history_kept_hides_the_stream_and_its_questions_stay_browsable(client, runtime):
    stream_id = new_stream(client, runtime)
    other = new_stream(client, runtime, "other.mp4")
    question_id = client.post(f"/streams/{stream_id}/questions", json={"text": "what?"}).json()["id"]
    runtime.memory_store.save(stream_id, _record(), expected_version=0)

    response = client.delete(f"/streams/{stream_id}", params={"history": "keep"})

    assert response.status_code == 200, response.text
    assert response.json() == {"id": stream_id, "history": "keep", "questions": 1}
    shown = client.get(f"/streams/{stream_id}").json()
    assert shown["deleted_at"] is not None and shown["active"] is False
    assert [s["id"] for s in client.get("/streams").json()["data"]] == [other]
    assert client.get("/streams").json()["count"] == 1
    assert client.get(f"/questions/{question_id}").json()["text"] == "what?"
    assert runtime.memory_store.size(stream_id) is None  # its memory is freed
    assert_error(client.post(f"/streams/{stream_id}/start"), 409, None, "deleted")
    assert_error(client.patch(f"/streams/{stream_id}", json={"name": "x"}), 409, None, "deleted")


def test_delete_when_history_deleted_removes_every_row_of_the_stream(client, runtime):
    stream_id = new_stream(client, runtime)
    other = new_stream(client, runtime, "other.mp4")
    question_id = client.post(f"/streams/{stream_id}/questions", json={"text": "what?"}).json()["id"]
    client.post(f"/streams/{other}/questions", json={"text": "and here?"})
    with session_scope(runtime.sessions) as session:
        repo.create_chunk(session, stream_id=stream_id, seq=0, t_start=0, t_end=2, num_frames=4, blob_key="k")
    runtime.memory_store.save(stream_id, _record(), expected_version=0)

    response = client.delete(f"/streams/{stream_id}", params={"history": "delete"})

    assert response.json() == {"id": stream_id, "history": "delete", "questions": 1}
    assert client.get(f"/streams/{stream_id}").status_code == 404
    assert client.get(f"/questions/{question_id}").status_code == 404
    assert (count_rows(runtime, Stream), count_rows(runtime, Question), count_rows(runtime, ChunkRecord)) == (1, 1, 0)
    assert runtime.memory_store.size(stream_id) is None


def test_list_when_filtered_by_status_pages_through_the_matching_streams_only(client, runtime):
    ids = [new_stream(client, runtime, f"clip{i}.mp4") for i in range(5)]
    with session_scope(runtime.sessions) as session:
        for stream_id in ids[:3]:
            repo.set_stream_status(session, stream_id=stream_id, status="live")

    first = client.get("/streams", params={"status": "live", "limit": 2}).json()
    second = client.get("/streams", params={"status": "live", "limit": 2, "skip": 2}).json()

    assert first["count"] == second["count"] == 3
    listed = [s["id"] for s in first["data"] + second["data"]]
    assert sorted(listed) == sorted(ids[:3]) and len(set(listed)) == 3
    assert all(s["status"] == "live" for s in first["data"] + second["data"])


def _record():  # type: ignore[no-untyped-def]
    """A small stored memory (one token) for a stream, as a worker would save it."""
    import torch

    from compression.memory import Memory
    from compression.tokens import TokenSet
    from store.memory_store import MemoryRecord
    from workers.services import StreamMemory

    tokens = TokenSet(torch.zeros(1, 8), torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.long),
                      torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.ones(1), {}, (1, 1))
    memory = Memory(16).append(tokens)
    record = StreamMemory(1, 0, memory, {}, 1).to_record()
    return MemoryRecord(record.version, record.last_seq, record.memory, record.state, record.tokens)
