"""A webrtc:// ingest configured from ``Settings`` answers one offer; prints which ICE servers it used, as JSON.

Meant to run inside a loopback-only network namespace (the test starts it that way), so that a
regression to aiortc's default STUN server (stun.l.google.com) fails the test instead of sending a
packet off the machine:
    unshare -n sh -c 'ip link set lo up; exec python -m tests.ingest.peers.ice_probe [--stun]'
``--stun`` runs a STUN server on 127.0.0.1 and configures it through ``VIDMEM_ICE_SERVERS``'s field.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
from typing import Any

from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection

from ingest import webrtc
from ingest.runner import StreamIngest
from ingest.webrtc import Answer, answer_offer, is_waiting
from tests.ingest.peers.webcam_track import HalvesTrack
from vidmem.settings import Settings
from workers.sources import ingest_config

STREAM = "probe"


class LoopbackStun:
    """A STUN server on 127.0.0.1 that answers Binding requests with the sender's address (RFC 5389)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.requests: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            request = stun.parse_message(data)
            self.requests.append(addr)
            response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                    transaction_id=request.transaction_id)
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            self.sock.sendto(bytes(response), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


async def answer_only(stream_id: str) -> Answer:
    """Post one offer from a STUN-less peer and return the answer, without connecting."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(HalvesTrack())
    try:
        await pc.setLocalDescription(await pc.createOffer())
        return await answer_offer(stream_id, pc.localDescription.sdp, pc.localDescription.type)
    finally:
        await pc.close()


def ice_servers_in_use(stream_id: str) -> dict[str, Any]:
    """The STUN/TURN servers of the stream's current peer connection. aiortc has no public getter; its aioice
    connection holds them, and without network that is the only place they show."""
    pc = webrtc._receivers[stream_id]._pc
    assert pc is not None
    ice = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection
    return {"stun_server": ice.stun_server, "turn_server": ice.turn_server}


def probe(stun_server: LoopbackStun | None) -> dict[str, Any]:
    servers = [f"stun:127.0.0.1:{stun_server.port}"] if stun_server else []
    config = ingest_config(Settings(_env_file=None, ice_hosts=["127.0.0.1"], ice_servers=servers))
    ingest = StreamIngest(STREAM, f"webrtc://{STREAM}", config, lambda chunk: None, lambda event: None)
    ingest.start()
    try:
        deadline = time.monotonic() + 10
        while not is_waiting(STREAM) and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = asyncio.run(answer_only(STREAM))
        return {
            "configured": list(config.ice_servers),
            **ice_servers_in_use(STREAM),
            "candidate_types": sorted(set(re.findall(r" typ (\w+)", answer.sdp))),
            "stun_requests_from": sorted({host for host, _ in stun_server.requests}) if stun_server else [],
            "stun_port": stun_server.port if stun_server else None,
        }
    finally:
        ingest.stop()
        ingest.join(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stun", action="store_true", help="configure a STUN server on 127.0.0.1")
    args = parser.parse_args()
    stun_server = LoopbackStun() if args.stun else None
    try:
        print(json.dumps(probe(stun_server)))
    finally:
        if stun_server is not None:
            stun_server.close()


if __name__ == "__main__":
    main()
