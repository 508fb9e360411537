"""Questions: queued at once (202), validated, browsable newest first."""

from __future__ import annotations


def test_ask_when_stream_exists_returns_202_with_queued_id(client, stream_id):
    response = client.post(f"/streams/{stream_id}/questions", json={"text": "What is in view?"})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["stream_id"] == stream_id
    stored = client.get(f"/questions/{body['id']}").json()
    assert stored["text"] == "What is in view?" and stored["status"] == "queued"


def test_ask_when_stream_unknown_returns_404(client):
    response = client.post("/streams/nope/questions", json={"text": "hello?"})

    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_ask_when_question_empty_returns_422(client, stream_id):
    for text in ["", "   "]:
        response = client.post(f"/streams/{stream_id}/questions", json={"text": text})
        assert response.status_code == 422, text


def test_ask_when_question_over_2000_chars_returns_422_with_the_limit(client, stream_id):
    response = client.post(f"/streams/{stream_id}/questions", json={"text": "x" * 2001})

    assert response.status_code == 422
    assert "2000" in response.json()["detail"]


def test_read_question_when_unknown_returns_404(client):
    assert client.get("/questions/unknown").status_code == 404


def test_history_is_newest_first_and_paginated(client, stream_id):
    ids = [
        client.post(f"/streams/{stream_id}/questions", json={"text": f"question {i}"}).json()["id"]
        for i in range(5)
    ]

    first = client.get(f"/streams/{stream_id}/questions", params={"limit": 2}).json()
    second = client.get(f"/streams/{stream_id}/questions", params={"cursor": first["next_cursor"], "limit": 2}).json()

    assert [q["id"] for q in first["data"]] == ids[::-1][:2]
    assert [q["id"] for q in second["data"]] == ids[::-1][2:4]


def test_ask_and_read_when_key_missing_or_wrong_return_401(client, stream_id):
    key = client.headers.pop("Authorization")

    refused = client.post(f"/streams/{stream_id}/questions", json={"text": "hi"})
    read = client.get(f"/streams/{stream_id}/questions")
    wrong = client.post(f"/streams/{stream_id}/questions", json={"text": "hi"}, headers={"Authorization": key + "x"})
    accepted = client.post(f"/streams/{stream_id}/questions", json={"text": "hi"}, headers={"Authorization": key})

    assert (refused.status_code, read.status_code, wrong.status_code) == (401, 401, 401)
    assert accepted.status_code == 202
