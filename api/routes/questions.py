"""Questions: queue one about a stream, read one, browse a stream's history."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from api.deps import SessionDep, SettingsDep, Skip, Writer, field_error
from api.schemas import QuestionCreate, QuestionPublic, QuestionQueued, QuestionsPublic
from store import repo
from workers.dispatch import enqueue_question

router = APIRouter(tags=["questions"])


@router.post(
    "/streams/{stream_id}/questions", status_code=status.HTTP_202_ACCEPTED, dependencies=[Writer]
)
def ask(stream_id: str, body: QuestionCreate, session: SessionDep, settings: SettingsDep) -> QuestionQueued:
    """Queue a question; a worker answers it. Poll GET /questions/{id}."""
    text = body.text.strip()
    if not text:
        raise field_error(("body", "text"), "the question is empty")
    if len(text) > settings.question_max_chars:
        raise field_error(
            ("body", "text"),
            f"the question has {len(text)} characters; at most {settings.question_max_chars} are allowed",
        )
    question = repo.create_question(
        session, stream_id=stream_id, text=text, window_start=body.window_start, window_end=body.window_end
    )
    session.commit()  # commit first: the worker must find the row
    enqueue_question(question.id)
    return QuestionQueued(id=question.id, status=question.status, stream_id=stream_id)


@router.get("/questions/{question_id}")
def read_question(question_id: str, session: SessionDep) -> QuestionPublic:
    """One question with its answer, token counts, timings and the method used."""
    return QuestionPublic.model_validate(repo.get_question(session, question_id))


@router.get("/streams/{stream_id}/questions")
def history(
    stream_id: str, session: SessionDep,
    skip: Skip = 0, limit: int = Query(50, ge=1, le=500),
) -> QuestionsPublic:
    """A stream's questions, newest first, paginated with skip/limit."""
    questions, total = repo.list_questions(session, stream_id=stream_id, skip=skip, limit=limit)
    return QuestionsPublic(
        data=[QuestionPublic.model_validate(q) for q in questions], count=total, skip=skip, limit=limit
    )
