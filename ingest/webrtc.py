"""Receive a browser's webcam over WebRTC (aiortc) into the same pipeline as every other source.

A stream whose URL is ``webrtc://...`` runs a ``WebRTCReceiver`` as its decode thread: an
asyncio loop of its own that waits for SDP offers. An offer is handed over with
``answer_offer(stream_id, sdp, type)`` (from any event loop in the same process, or
``answer_offer_sync`` from a thread) and gets the answer back; ``workers.signaling`` brings the
API's offers here, in process or through Redis from another host. Offers find their receiver by
the stream's id, never by the name in its URL: a stream registered as ``webrtc://camA`` must not
receive the offers meant for stream camA.
Each offer replaces the previous peer connection; the time in between is a gap on the stream's
timeline, like an RTSP reconnect. aiortc decodes every frame it receives (VP8 or H.264), so the
page caps the browser's frame rate instead (see ``Answer.max_framerate``).

ICE host candidates are the machine's addresses except loopback (aioice's default), or exactly
``IngestConfig.ice_hosts`` when set, e.g. ``("127.0.0.1",)`` on a loopback-only test network.
aioice has no per-connection setting, so this is process-wide (``use_ice_hosts``).

STUN and TURN servers are exactly ``IngestConfig.ice_servers`` (from the settings): none by
default, because aiortc's own default sends a STUN request to a public server on every offer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass

import aioice.ice
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri

from ingest.delivery import Delivery
from ingest.entities import IngestConfig, StatusEvent, StreamStatus
from ingest.errors import IngestError
from ingest.pipeline import FramePipeline
from ingest.stats import StatsBox
from ingest.timeline import Timeline

log = logging.getLogger(__name__)

TICK_S = 0.1  # how often the receiver checks for stop and stalls
_DEFAULT_HOST_ADDRESSES = aioice.ice.get_host_addresses


class WebRTCNotReady(IngestError):
    """No running WebRTC ingest has this stream id in this process (not started yet, or another process)."""


@dataclass(frozen=True)
class Answer:
    sdp: str
    type: str
    max_framerate: float  # what the browser need send: more would be decoded only to be dropped


_receivers: dict[str, WebRTCReceiver] = {}  # stream id -> running receiver; the process-wide rendezvous
_receivers_lock = threading.Lock()


def is_waiting(stream_id: str) -> bool:
    """True when the WebRTC ingest of stream ``stream_id`` runs in this process and takes offers."""
    with _receivers_lock:
        return stream_id in _receivers


def waiting_ids() -> list[str]:
    """Ids of the streams whose WebRTC ingest runs in this process (``workers.signaling`` serves their offers)."""
    with _receivers_lock:
        return list(_receivers)


def _submit(stream_id: str, sdp: str, type_: str) -> concurrent.futures.Future[Answer]:
    with _receivers_lock:
        receiver = _receivers.get(stream_id)
    if receiver is None or receiver.loop is None:
        raise WebRTCNotReady(f"no WebRTC ingest of stream {stream_id!r} is running in this process")
    return asyncio.run_coroutine_threadsafe(receiver.accept(sdp, type_), receiver.loop)


async def answer_offer(stream_id: str, sdp: str, type_: str = "offer", timeout: float = 15.0) -> Answer:
    """Give the offer to the receiver of stream ``stream_id`` and return its answer (usable from any loop)."""
    return await asyncio.wait_for(asyncio.wrap_future(_submit(stream_id, sdp, type_)), timeout)


def answer_offer_sync(stream_id: str, sdp: str, type_: str = "offer", timeout: float = 15.0) -> Answer:
    """``answer_offer`` for a thread without an event loop (the offer relay of a split deployment)."""
    future = _submit(stream_id, sdp, type_)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"the WebRTC ingest of stream {stream_id!r} did not answer within {timeout:.0f} s") from None


def use_ice_hosts(hosts: tuple[str, ...]) -> None:
    """Offer exactly ``hosts`` as ICE host candidates, process-wide (aioice has no per-connection knob)."""
    if hosts:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(hosts)
    else:
        aioice.ice.get_host_addresses = _DEFAULT_HOST_ADDRESSES


def rtc_configuration(config: IngestConfig) -> RTCConfiguration:
    """The peer connections' ICE servers: exactly the configured ones (aiortc's default is a public STUN server).

    aiortc uses the first STUN and the first TURN URL only; TURN needs ``ice_username``/``ice_credential``.
    """
    if not config.ice_servers:
        return RTCConfiguration(iceServers=[])
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=list(config.ice_servers), username=config.ice_username, credential=config.ice_credential),
    ])


def _malformed_ice_servers(urls: tuple[str, ...]) -> list[str]:
    """URLs aiortc would refuse only when the first offer arrives, as if the offer were bad."""
    bad = []
    for url in urls:
        try:
            parse_stun_turn_uri(url)
        except ValueError:
            bad.append(url)
    return bad


class WebRTCReceiver:
    """The decode thread of a browser stream."""

    def __init__(
        self, stream_id: str, config: IngestConfig, stats: StatsBox, delivery: Delivery, stop: threading.Event,
    ) -> None:
        self.stream_id, self.config = stream_id, config
        self.stats, self.delivery, self.stop = stats, delivery, stop
        timeline = Timeline(live=True, min_gap_s=max(1.0 / config.sample_fps, 0.5))
        self.pipeline = FramePipeline(stream_id, config, timeline, stats, delivery, f"browser {stream_id!r}", stop)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pc: RTCPeerConnection | None = None
        self._last_frame = time.monotonic()
        self._stalled = False
        self._consumers: set[asyncio.Task[None]] = set()  # one per video track; ended before the loop closes

    def run(self) -> StatusEvent:
        """Serve offers until stopped; returns the final status."""
        bad_ice = _malformed_ice_servers(self.config.ice_servers)
        if bad_ice:
            return self.delivery.event(StreamStatus.FAILED, f"malformed ICE server URLs in the settings: {bad_ice}")
        if self.config.ice_hosts:
            use_ice_hosts(self.config.ice_hosts)
        with _receivers_lock:
            if self.stream_id in _receivers:
                return self.delivery.event(
                    StreamStatus.FAILED, f"a WebRTC ingest of stream {self.stream_id!r} already runs")
            self.loop = asyncio.new_event_loop()
            _receivers[self.stream_id] = self
        try:
            return self.loop.run_until_complete(self._serve())
        finally:
            with _receivers_lock:
                _receivers.pop(self.stream_id, None)
            self.loop.close()

    async def accept(self, sdp: str, type_: str) -> Answer:
        """Answer a browser's offer with a new peer connection (the previous one is closed)."""
        await self._close_pc()
        pc = RTCPeerConnection(rtc_configuration(self.config))
        self._pc = pc
        pc.on("track", lambda track: self._on_track(pc, track))
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=type_))
        await pc.setLocalDescription(await pc.createAnswer())
        self.stats.add(connects=1)
        self.pipeline.new_connection()
        self.pipeline.timeline.new_segment()
        log.info("stream %s: WebRTC offer answered", self.stream_id)
        local = pc.localDescription
        return Answer(local.sdp, local.type, max_framerate=min(30.0, max(5.0, 2 * self.config.sample_fps)))

    async def _serve(self) -> StatusEvent:
        self.delivery.report(StreamStatus.CONNECTING, f"waiting for a browser's offer to stream {self.stream_id!r}")
        while not self.stop.is_set():
            await asyncio.sleep(TICK_S)
            self._check_stall()
        await self._close_pc()
        for task in list(self._consumers):  # a closed track's recv may never wake: a pending task at loop close
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self.pipeline.flush()
        return self.delivery.event(StreamStatus.STOPPED, "stopped by request")

    def _check_stall(self) -> None:
        idle = time.monotonic() - self._last_frame
        if self.pipeline.live_reported and not self._stalled and idle > self.config.stall_seconds:
            self._stalled = True
            self.pipeline.flush()
            self.pipeline.new_connection()  # the next frame reports LIVE again
            self.delivery.report(StreamStatus.RECONNECTING, f"stalled: no video from the browser for {idle:.1f} s")

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            task = asyncio.ensure_future(self._consume(pc, track))
            self._consumers.add(task)
            task.add_done_callback(self._consumers.discard)

    async def _consume(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        while pc is self._pc:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.stats.add(frames_read=1)
            self._last_frame, self._stalled = time.monotonic(), False
            self.pipeline.offer(frame, self.pipeline.timeline.seconds(frame.pts, frame.time_base))

    def _on_state(self, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        log.info("stream %s: WebRTC connection %s", self.stream_id, state)
        if pc is self._pc and state in ("failed", "closed"):
            self.pipeline.flush()
            self.stats.add(reconnects=1)
            self.delivery.report(StreamStatus.RECONNECTING, f"browser connection {state}; waiting for a new offer")

    async def _close_pc(self) -> None:
        pc, self._pc = self._pc, None
        if pc is not None:
            await pc.close()
