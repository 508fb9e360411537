"""History (issue 18): filters, full-text search, cursor pages that hold while questions arrive,
CSV and JSON-lines export, and migration 0005 itself, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import random
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text, update

from api.main import create_app
from api.windows import parse_last
from store import db, history, repo
from store.db import session_scope
from store.models import Question, new_id
from tests.api.databases import client_with_default_key, runtime_on_each_database  # noqa: F401 - fixtures
from tests.api_keys import authorise, bearer, new_key
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(120)


def new_stream(runtime: Runtime, tenant: str = "default") -> str:
    with session_scope(runtime.sessions) as session:
        return repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x", tenant_id=tenant).id


def add_question(runtime: Runtime, stream_id: str, text_: str, *, answer: str | None = None,
                 status: str = "queued", created_at: datetime | None = None) -> str:
    with session_scope(runtime.sessions) as session:
        question = repo.create_question(session, stream_id=stream_id, text=text_)
        question.answer, question.status = answer, status
        if created_at is not None:
            question.created_at = created_at
        return question.id


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [q["id"] for q in response.json()["data"]]


# --- filters and search -----------------------------------------------------------------------------


def test_history_filters_by_stream_status_and_time_across_streams(client, runtime):
    cam, door = new_stream(runtime), new_stream(runtime)
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    old = add_question(runtime, cam, "old", status="done", created_at=t0)
    mid = add_question(runtime, door, "mid", status="failed", created_at=t0 + timedelta(hours=1))
    new = add_question(runtime, cam, "new", status="done", created_at=t0 + timedelta(hours=2))

    assert ids(client.get("/questions")) == [new, mid, old]
    assert ids(client.get("/questions", params={"stream_id": cam})) == [new, old]
    assert ids(client.get(f"/streams/{door}/questions")) == [mid]
    assert ids(client.get("/questions", params={"status": "done"})) == [new, old]
    assert ids(client.get("/questions", params=[("status", "done"), ("status", "failed")])) == [new, mid, old]
    since = (t0 + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=2))).isoformat()  # same instant, +02:00
    assert ids(client.get("/questions", params={"since": since})) == [new, mid]
    assert ids(client.get("/questions", params={"since": since, "until": "2026-03-01T11:30:00Z"})) == [mid]
    for empty in ("status", "since", "until", "q", "cursor"):  # an empty value is not "not given": leave it out
        assert client.get("/questions", params={empty: ""}).json()["field"].startswith(f"query.{empty}"), empty


def test_history_search_uses_the_databases_full_text_search(client, runtime):
    cam = new_stream(runtime)
    van = add_question(runtime, cam, "Did a delivery van stop at the gate?", answer="Yes, a white van parked.")
    dog = add_question(runtime, cam, "What colour was the dog?", answer="The dog was brown.")
    car = add_question(runtime, cam, "How many cars passed?", answer="Three red cars drove by the gate.")

    def search(q: str) -> set[str]:
        return set(ids(client.get("/questions", params={"q": q})))

    assert search("vans") == {van}, "stemmed: vans finds van"
    assert search("brown") == {dog}, "the answer is searched too"
    assert search("gate") == {van, car}
    assert search("gate red") == {car}, "words of a group must all occur"
    assert search('"red cars"') == {car} and search('"cars red"') == set(), "phrases keep their order"
    assert search("dog or van") == {van, dog}
    assert search("giraffe") == set()
    for hostile in ['"unclosed', "NEAR(gate", "gate*", "text:dog", "gate AND", "-dog", "dog)", "OR dog"]:
        response = client.get("/questions", params={"q": hostile})  # search syntax of neither database is read
        assert response.status_code == 200, (hostile, response.text)
    assert client.get("/questions", params={"q": "( * )"}).json()["field"] == "query.q"


def test_history_search_follows_answers_and_deletions(client, runtime):
    cam = new_stream(runtime)
    question_id = add_question(runtime, cam, "What happened?")
    assert ids(client.get("/questions", params={"q": "parcel"})) == []

    with session_scope(runtime.sessions) as session:
        session.execute(update(Question).where(Question.id == question_id).values(answer="A parcel was dropped."))
    found = ids(client.get("/questions", params={"q": "parcels"}))
    if runtime.engine.dialect.name == "postgresql":
        with runtime.engine.connect() as conn:
            terms = set(conn.execute(text("SELECT lexeme FROM questions_fts_terms WHERE question_id = :id"),
                                     {"id": question_id}).scalars())
        assert terms == {"happen", "parcel", "drop"}, terms
    with session_scope(runtime.sessions) as session:
        session.delete(repo.get_stream(session, cam))  # its questions go with it (ON DELETE CASCADE)

    assert found == [question_id]
    assert ids(client.get("/questions", params={"q": "parcel"})) == []
    with runtime.engine.connect() as conn:
        if runtime.engine.dialect.name == "sqlite":
            assert conn.execute(text("SELECT count(*) FROM questions_fts_rows")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM questions_fts")).scalar() == 0
        else:  # the term table follows the answer, then the deletion
            assert conn.execute(text("SELECT count(*) FROM questions_fts_terms")).scalar() == 0


def test_search_pages_when_rows_were_inserted_out_of_time_order_equal_the_sorted_matches(runtime, monkeypatch):
    # given 600 questions of two tenants inserted in shuffled time order (as an import or racing writers leave
    # them), a third of them matching, some later deleted
    rng = random.Random(7)
    streams = {tenant: new_stream(runtime, tenant) for tenant in ("default", "other")}
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    rows = []
    for minute in rng.sample(range(600), 600):
        tenant = rng.choice(("default", "other"))
        word = "van" if rng.random() < 0.35 else "door"
        rows.append({"id": new_id(), "stream_id": streams[tenant], "tenant_id": tenant, "status": rng.choice(
            ("done", "failed")), "text": f"a {word} at {minute}", "created_at": t0 + timedelta(minutes=minute),
            "timings": {}, "attempts": 0})
    with runtime.engine.begin() as conn:
        for row in rows:  # one statement a row: each insert sees the rows before it, as the trigger does live
            conn.execute(insert(Question), [row])
        gone = [row["id"] for row in rows[::50]]
        conn.execute(Question.__table__.delete().where(Question.id.in_(gone)))
    until = t0 + timedelta(minutes=150)  # three in four of the newest-first candidates fail this filter
    for filters in (history.Filters(tenant_id="default", statuses=("done",), q="vans"),
                    history.Filters(tenant_id="default", statuses=("done",), q="vans", until=until)):
        expected = sorted(((r["created_at"], r["id"]) for r in rows if r["tenant_id"] == "default"
                           and r["status"] == "done" and "van" in r["text"] and r["id"] not in gone
                           and (filters.until is None or r["created_at"] < filters.until)), reverse=True)
        # with several batches of candidates a page, and with the shipped batches
        for sqlite_batch, pg_batch in ((8, 8), (history.SEARCH_BATCH, history.PG_SEARCH_BATCH)):
            monkeypatch.setattr(history, "SEARCH_BATCH", sqlite_batch)
            monkeypatch.setattr(history, "PG_SEARCH_BATCH", pg_batch)
            # when every page of 7 is read through the cursor
            seen, after = [], None
            while True:
                with session_scope(runtime.sessions) as session:
                    page, after = history.page(session.connection(), filters, after=after, limit=7)
                    seen += [(q.created_at, q.id) for q in page]
                if after is None:
                    break
            # then the pages hold exactly the matches, newest first, each once
            assert len(expected) > 10 and seen == expected, (filters, sqlite_batch, pg_batch)


def test_history_when_query_is_bad_returns_422_naming_the_field(client, runtime):
    for params, field in [
        ({"q": "!!! ..."}, "query.q"), ({"q": "x" * 201}, "query.q"), ({"q": " ".join(["w"] * 17)}, "query.q"),
        ({"q": "a\x00b"}, "query.q"), ({"cursor": "not-a-cursor"}, "query.cursor"), ({"cursor": "W10"}, "query.cursor"),
        ({"limit": 0}, "query.limit"), ({"limit": 201}, "query.limit"), ({"status": "lost"}, "query.status"),
        ({"since": "2026-03-01T10:00:00"}, "query.since"), ({"until": "tomorrow"}, "query.until"),
        ({"until": "1767268800"}, "query.until"),
    ]:
        response = client.get("/questions", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["field"].startswith(field), (params, response.json())
    assert client.get("/questions", params={"stream_id": "nope"}).status_code == 404
    assert client.get("/streams/nope/questions").status_code == 404


# --- cursor pages -----------------------------------------------------------------------------------


def test_cursor_pages_neither_repeat_nor_skip_while_questions_arrive(client, runtime):
    cam = new_stream(runtime)
    existing = [add_question(runtime, cam, f"question {i}") for i in range(30)]
    stop = threading.Event()
    arrived: list[str] = []

    def arrive() -> None:  # new questions keep arriving while the pages are read
        while not stop.is_set():
            arrived.append(client.post(f"/streams/{cam}/questions", json={"text": "a new one"}).json()["id"])

    writer = threading.Thread(target=arrive)
    writer.start()
    try:
        pages, cursor = [], None
        while True:
            params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
            body = client.get(f"/streams/{cam}/questions", params=params).json()
            pages.append([q["id"] for q in body["data"]])
            cursor = body["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        writer.join()

    seen = [question_id for page in pages for question_id in page]
    assert arrived, "questions arrived during the reading"
    assert len(seen) == len(set(seen)), "no question on two pages"
    assert set(existing) <= set(seen), "none of the questions there at the start was skipped"
    assert [i for i in seen if i in set(existing)] == existing[::-1], "newest first"


# --- export -----------------------------------------------------------------------------------------


def test_export_as_csv_and_json_lines_with_the_history_filters(client, runtime):
    cam, door = new_stream(runtime), new_stream(runtime)
    done = add_question(runtime, cam, "=HYPERLINK(\"http://evil\")", answer="a, \"quoted\"\nanswer", status="done")
    add_question(runtime, cam, "still queued")
    add_question(runtime, door, "another stream", status="done")

    as_csv = client.get("/questions/export", params={"format": "csv", "stream_id": cam, "status": "done"})
    as_jsonl = client.get("/questions/export", params={"format": "jsonl", "stream_id": cam})

    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["id"] for r in rows] == [done]
    assert rows[0]["text"].startswith("'="), "a formula is quoted, not run by a spreadsheet"
    assert rows[0]["answer"] == 'a, "quoted"\nanswer' and rows[0]["status"] == "done"
    for column in ("latency_s", "covered_start", "covered_since", "visual_tokens_before", "visual_tokens_after",
                   "memory_tokens", "model", "specs", "queued_at", "started_at", "finished_at", "error"):
        assert column in rows[0]
    lines = [json.loads(line) for line in as_jsonl.text.splitlines()]
    assert as_jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert [line["text"] for line in lines] == ["still queued", "=HYPERLINK(\"http://evil\")"]
    assert client.get("/questions/export").status_code == 422
    assert client.get("/questions/export", params={"format": "xml"}).json()["field"] == "query.format"


def test_export_streams_every_row_past_one_batch(client, runtime):
    cam = new_stream(runtime)
    with session_scope(runtime.sessions) as session:
        session.execute(insert(Question), [{"id": f"{i:032x}", "stream_id": cam, "text": f"q{i}", "status": "done",
                                            "timings": {}} for i in range(1203)])

    lines = client.get("/questions/export", params={"format": "jsonl"}).text.splitlines()

    assert len(lines) == 1203 and len({json.loads(line)["id"] for line in lines}) == 1203


def test_export_and_history_show_only_the_callers_tenant(client, runtime):
    mine, theirs = new_stream(runtime), new_stream(runtime, tenant="tenant-b")
    add_question(runtime, mine, "mine")
    with session_scope(runtime.sessions) as session:
        question = repo.create_question(session, stream_id=theirs, text="theirs")
        assert question.tenant_id == "tenant-b"
    other = bearer(new_key(runtime.sessions, "tenant-b"))

    assert [q["text"] for q in client.get("/questions").json()["data"]] == ["mine"]
    assert [q["text"] for q in client.get("/questions", headers=other).json()["data"]] == ["theirs"]
    exported = client.get("/questions/export", params={"format": "jsonl"}).text
    assert "theirs" not in exported and "mine" in exported


# --- migration 0005 ---------------------------------------------------------------------------------


def test_migration_0005_upgrades_downgrades_and_indexes_existing_questions(runtime):
    url = runtime.settings.sqlalchemy_url
    cam = new_stream(runtime)
    add_question(runtime, cam, "Where is the van?", answer="By the door.")
    runtime.engine.dispose()
    config = db.alembic_config(url)

    command.downgrade(config, "0004")
    command.upgrade(config, "head")

    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Question)).scalar() == 1
        row = conn.execute(select(Question.queued_at, Question.created_at)).one()
        assert row.queued_at == row.created_at, "existing rows: queued when created"
    engine.dispose()
    with TestClient(create_app(runtime), raise_server_exceptions=False) as api:
        authorise(api, runtime)
        assert [q["text"] for q in api.get("/questions", params={"q": "doors"}).json()["data"]] == [
            "Where is the van?"], "rows from before the migration are found"


# --- durations in words -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    (300, 300), ("300", 300), ("5 minutes", 300), ("last 5 minutes", 300), ("the last hour", 3600),
    ("2h", 7200), ("90s", 90), ("1h30m", 5400), ("PT5M", 300), ("in the past 2 days, 3 hours", 183600),
    ("an hour", 3600), ("1.5 hours", 5400), ("LAST 10 MIN", 600),
])
def test_parse_last_reads_durations_as_people_write_them(value, seconds):
    assert parse_last(value) == seconds


@pytest.mark.parametrize("value", ["", "soon", "5 parsecs", "5 minutes ago", 0, -3, True, None, "nan", "1e400",
                                   float("inf"), 10**9])
def test_parse_last_refuses_what_is_not_a_positive_duration(value):
    with pytest.raises(ValueError, match="duration|must be|at most"):
        parse_last(value)
