"""WebRTC offers from the API to the ingest process that runs the stream, found by the stream's id.

The API never holds a peer connection: the browser's media goes to the ingest process that runs
``webrtc://<id>``, so the SDP offer must reach that process and its answer come back.

- **Redis** (distributed mode, and ``vidmem serve`` with a Redis store): the API pushes the offer
  onto the list ``vidmem:webrtc:offers:<stream id>`` and waits on a reply list of its own. Every
  ingest process pops from the lists of the WebRTC streams it runs (one BLPOP over all of them),
  answers through ``ingest.webrtc`` and pushes the answer to the reply list. An offer no ingest
  took within ``TAKE_S`` is taken back (LREM) by the API, which answers 503: no two processes
  ever answer the same offer, and a late ingest never replaces a browser's connection with a
  stale offer. Deadlines use the Redis server's clock, so hosts need not agree on the time.
- **In process** (embedded mode without Redis): ``vidmem serve`` runs ingest in the API's
  process; the offer goes straight to ``ingest.webrtc.answer_offer``.

Payloads read from Redis are checked before use: the store is shared, not trusted code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from ingest import webrtc
from ingest.webrtc import Answer, WebRTCNotReady
from workers.runtime import Runtime

log = logging.getLogger(__name__)

TAKE_S = 10.0  # an ingest starts a new stream within about a second and takes its offer at once
ANSWER_S = 15.0  # after taking an offer, the ingest answers within this (ICE gathering on host addresses)
REPLY_TTL_S = 60  # an answer nobody read is gone after this
OFFER_PREFIX = "vidmem:webrtc:offers:"
REPLY_PREFIX = "vidmem:webrtc:reply:"
BLOCK_SLICE_S = 2.0  # one blocking Redis call, well under a client's socket timeout
POLL_S = 0.5  # how long the ingest's BLPOP blocks; also how soon a newly started stream's list is watched


class OfferFailed(Exception):
    """The offer was not answered; ``status`` is the HTTP status the API should give (400: a bad offer, else 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoIngest(OfferFailed):
    """No ingest process took the stream's offer in time (none runs it, or none runs at all)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


def offer_key(stream_id: str) -> str:
    return OFFER_PREFIX + stream_id


async def relay_offer(runtime: Runtime, stream_id: str, sdp: str, type_: str = "offer") -> Answer:
    """The answer of the ingest that runs ``stream_id``; raises OfferFailed (NoIngest when none took it)."""
    if runtime.redis is None:
        return await _answer_in_process(stream_id, sdp, type_)
    return await asyncio.to_thread(_relay_through_redis, runtime.redis, stream_id, sdp, type_)


async def _answer_in_process(stream_id: str, sdp: str, type_: str) -> Answer:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TAKE_S
    while not webrtc.is_waiting(stream_id):
        if loop.time() > deadline:
            raise NoIngest(f"no ingest took stream {stream_id!r} within {TAKE_S:.0f} s (without Redis, WebRTC "
                           "needs ingest in the API's process: `vidmem serve`)")
        await asyncio.sleep(0.1)
    try:
        return await webrtc.answer_offer(stream_id, sdp, type_, timeout=ANSWER_S)
    except WebRTCNotReady as exc:
        raise NoIngest(str(exc)) from exc
    except TimeoutError as exc:
        raise OfferFailed(503, f"the ingest of stream {stream_id!r} did not answer within {ANSWER_S:.0f} s") from exc
    except ValueError as exc:  # aiortc rejects a malformed or unsupported offer
        raise OfferFailed(400, f"bad SDP offer: {exc}") from exc


def _server_time(client: Any) -> float:  # noqa: ANN401 - a redis.Redis
    seconds, micros = client.time()
    return seconds + micros / 1e6


def _relay_through_redis(client: Any, stream_id: str, sdp: str, type_: str) -> Answer:  # noqa: ANN401
    """Push the offer, wait for an ingest to take and answer it; take it back when none did."""
    request_id = uuid.uuid4().hex
    reply_key = REPLY_PREFIX + request_id
    try:
        expires = _server_time(client) + TAKE_S + ANSWER_S
        payload = json.dumps({"id": request_id, "sdp": sdp, "type": type_, "reply": reply_key, "expires": expires})
        with client.pipeline() as pipe:
            pipe.rpush(offer_key(stream_id), payload).expire(offer_key(stream_id), int(TAKE_S + ANSWER_S) + 1)
            pipe.execute()
        item = _blpop_for(client, reply_key, TAKE_S)
        if item is None:
            if client.lrem(offer_key(stream_id), 1, payload):
                raise NoIngest(f"no ingest took stream {stream_id!r} within {TAKE_S:.0f} s (is `vidmem ingest` "
                               "running and connected to the same Redis?)")
            item = _blpop_for(client, reply_key, ANSWER_S)  # taken just now: its answer is on the way
    except RedisError as exc:
        raise OfferFailed(503, f"Redis unavailable, the offer could not reach the ingest: {exc}") from exc
    if item is None:
        raise OfferFailed(503, f"the ingest of stream {stream_id!r} took the offer but did not answer in time")
    return _parse_reply(item[1])


def _blpop_for(client: Any, key: str, seconds: float) -> tuple[bytes, bytes] | None:  # noqa: ANN401
    """BLPOP for up to ``seconds``, in slices shorter than the client's socket timeout (redis-py's default: 5 s)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        item = client.blpop([key], timeout=min(BLOCK_SLICE_S, max(left, 0.01)))
        if item is not None:
            return item
    return None


def _parse_reply(raw: bytes) -> Answer:
    try:
        reply = json.loads(raw)
        if reply.get("ok"):
            return Answer(str(reply["sdp"]), str(reply["type"]), float(reply["max_framerate"]))
        status, detail = int(reply["status"]), str(reply["detail"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OfferFailed(503, f"malformed answer from the ingest: {type(exc).__name__}") from None
    raise OfferFailed(400 if status == 400 else 503, detail)


@dataclass(frozen=True)
class OfferRequest:
    stream_id: str
    sdp: str
    type: str
    reply: str
    expires: float

    @classmethod
    def parse(cls, key: bytes, raw: bytes) -> OfferRequest:
        """The request popped from ``key``; the stream id comes from the key, never from the payload."""
        data = json.loads(raw)
        reply, sdp, type_ = data["reply"], data["sdp"], data["type"]
        if not (isinstance(reply, str) and reply.startswith(REPLY_PREFIX) and isinstance(sdp, str)
                and type_ == "offer"):
            raise ValueError("not an offer request")
        return cls(key.decode().removeprefix(OFFER_PREFIX), sdp, type_, reply, float(data["expires"]))


class OfferServer:
    """The ingest side: answers the offers of the WebRTC streams this process runs (one thread)."""

    def __init__(self, client: Any) -> None:  # noqa: ANN401 - a redis.Redis
        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webrtc-offers", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("WebRTC offers of this process's streams are served through Redis")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(POLL_S + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            keys = [offer_key(stream_id) for stream_id in webrtc.waiting_ids()]
            if not keys:
                self._stop.wait(POLL_S)
                continue
            try:
                item = self.client.blpop(keys, timeout=POLL_S)
            except RedisError:
                log.warning("WebRTC offers: Redis unavailable; retrying", exc_info=True)
                self._stop.wait(1.0)
                continue
            if item is not None:
                threading.Thread(target=self.serve, args=item, name="webrtc-offer", daemon=True).start()

    def serve(self, key: bytes, raw: bytes) -> None:
        """Answer one popped request and push the reply (an expired request is dropped: its API gave up)."""
        try:
            request = OfferRequest.parse(key, raw)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("WebRTC offers: dropped a malformed request from %s", key.decode(errors="replace"))
            return
        try:
            if _server_time(self.client) > request.expires:
                log.info("stream %s: dropped a WebRTC offer whose requester gave up", request.stream_id)
                return
            reply = self._answer(request)
            with self.client.pipeline() as pipe:
                pipe.rpush(request.reply, json.dumps(reply)).expire(request.reply, REPLY_TTL_S).execute()
        except RedisError:
            log.warning("stream %s: WebRTC answer not delivered, Redis unavailable", request.stream_id, exc_info=True)

    def _answer(self, request: OfferRequest) -> dict[str, Any]:
        try:
            answer = webrtc.answer_offer_sync(request.stream_id, request.sdp, request.type, timeout=ANSWER_S)
        except WebRTCNotReady as exc:
            return {"ok": False, "status": 503, "detail": str(exc)}
        except TimeoutError:
            return {"ok": False, "status": 503, "detail": f"no answer within {ANSWER_S:.0f} s"}
        except ValueError as exc:  # aiortc rejects a malformed or unsupported offer
            return {"ok": False, "status": 400, "detail": f"bad SDP offer: {exc}"}
        except Exception as exc:  # the requester must hear of it, not wait for its timeout
            log.exception("stream %s: answering a WebRTC offer failed", request.stream_id)
            return {"ok": False, "status": 503, "detail": f"the ingest failed to answer: {type(exc).__name__}"}
        return {"ok": True, "sdp": answer.sdp, "type": answer.type, "max_framerate": answer.max_framerate}
