"""The destination policy: which networks and files a source may point to, at registration and at every connect.

Tests that would send a packet if a check failed run in a loopback-only network namespace
(``in_loopback_netns``) and use documentation addresses (192.0.2.0/24, 198.51.100.0/24).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ingest.destinations import FILES_DISABLED, NETWORK_REFUSED, DestinationPolicy, parse_networks
from ingest.entities import IngestConfig, StreamStatus
from ingest.errors import DestinationRefused, SourceUnavailable
from ingest.runner import StreamIngest
from ingest.sources import CONNECT_FAILED, check_source, open_source
from tests.ingest.peers import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
IN_NETNS = "VIDMEM_TEST_IN_NETNS"
LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])


def in_loopback_netns(request: pytest.FixtureRequest) -> bool:
    """True inside a loopback-only namespace: run the test body. Outside, re-run this test in one; False.

    The child's result is asserted here, so the test fails when its body fails in the namespace.
    """
    if os.environ.get(IN_NETNS) == "1":
        assert [name for _, name in socket.if_nameindex()] == ["lo"], "not in a loopback-only namespace"
        return True
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        skip_or_fail("unshare/ip (util-linux, iproute2) are missing")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        skip_or_fail("cannot create a network namespace")
    test = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {shlex.quote(request.node.nodeid)}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {test}"], cwd=REPO,
                          env={**os.environ, IN_NETNS: "1"}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    return False


class Listener:
    """A TCP server on loopback that counts the connections it accepts (and answers nothing useful)."""

    def __init__(self, reply: bytes = b"") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.reply = reply
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                if self.reply:
                    conn.recv(4096)
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "0.0.0.0", "::", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
    "fe80::1", "fe80::1%eth0", "fd00::5", "224.0.0.251", "ff02::1", "192.0.2.10", "198.51.100.7", "100.64.0.1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "::127.0.0.1",
])
def test_allows_address_when_default_policy_denies_internal_and_special_ranges(address):
    assert DestinationPolicy().allows_address(address) is False


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_allows_address_when_public_unicast_passes(address):
    assert DestinationPolicy().allows_address(address) is True


def test_allows_address_when_a_subnet_is_allowed_opens_only_that_subnet():
    policy = DestinationPolicy.build(["10.1.0.0/16"], ["10.0.0.0/8", "169.254.0.0/16"], None)
    assert policy.allows_address("10.1.2.3") is True
    assert policy.allows_address("10.2.0.1") is False and policy.allows_address("169.254.169.254") is False


def test_allows_address_when_a_host_is_denied_inside_an_allowed_range_the_most_specific_wins():
    policy = DestinationPolicy.build(["0.0.0.0/0"], ["169.254.169.254/32"], None)
    assert policy.allows_address("169.254.169.254") is False and policy.allows_address("169.254.1.1") is True


def test_check_source_when_network_sources_point_inward_refuses_with_one_generic_message(request):
    if not in_loopback_netns(request):
        return
    config = IngestConfig(destinations=DestinationPolicy())
    urls = ["http://192.0.2.10/latest", "rtsp://198.51.100.7:554/x", "http://169.254.169.254/latest/meta-data",
            "rtsp://localhost:6379/x", "http://[::ffff:127.0.0.1]:8000/streams", "http://2130706433/",
            "rtsp://admin:pw@[fe80::1%25lo]/x", "http://no-such-name.invalid/x"]
    messages = set()
    for url in urls:
        with pytest.raises(DestinationRefused) as info:
            check_source(url, config)
        messages.add(str(info.value))
    assert messages == {NETWORK_REFUSED}


def test_open_source_when_policy_denies_at_connect_makes_no_connection(request):
    if not in_loopback_netns(request):
        return
    listener = Listener()
    try:
        # given a source checked while loopback was allowed (as a name that resolved elsewhere then)
        allowed = IngestConfig(destinations=DestinationPolicy(allowed_networks=LOOPBACK), open_timeout_s=2.0)
        source = check_source(f"rtsp://localhost:{listener.port}/x", allowed)
        # when it connects under a policy that denies the address the name resolves to now
        with pytest.raises(DestinationRefused, match=f"^{NETWORK_REFUSED}$"):
            open_source(source, IngestConfig(destinations=DestinationPolicy(), open_timeout_s=2.0))
        time.sleep(0.2)
        # then nothing reached the listener
        assert listener.accepted == 0
    finally:
        listener.close()


def test_stream_ingest_when_source_is_a_documentation_address_fails_without_connecting(request):
    if not in_loopback_netns(request):
        return
    events = []
    config = IngestConfig(destinations=DestinationPolicy(), open_timeout_s=2.0)
    ingest = StreamIngest("doc", "rtsp://192.0.2.10:554/x", config, on_chunk=lambda c: None, on_status=events.append)
    ingest.start()
    assert ingest.join(10)
    final = events[-1]
    assert final.status is StreamStatus.FAILED and final.reason == NETWORK_REFUSED, events
    assert ingest.stats().get("connects", 0) == 0


def test_open_source_under_a_policy_hides_whether_the_port_is_open(request):
    if not in_loopback_netns(request):
        return
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    talker = Listener(reply=b"SSH-2.0-OpenSSH_9.6\r\n")  # an open port speaking something else
    config = IngestConfig(destinations=DestinationPolicy(allowed_networks=LOOPBACK), open_timeout_s=2.0,
                          stall_seconds=2.0)
    try:
        reasons = set()
        for port in (closed_port, talker.port):
            with pytest.raises(SourceUnavailable) as info:
                open_source(check_source(f"rtsp://u:pw@127.0.0.1:{port}/x", config), config)
            reasons.add(str(info.value))
        assert reasons == {CONNECT_FAILED} and talker.accepted >= 1
    finally:
        talker.close()


def test_check_source_when_file_is_outside_the_dir_refuses_alike_whether_it_exists_or_not(tmp_path):
    allowed = tmp_path / "videos"
    allowed.mkdir()
    config = IngestConfig(destinations=DestinationPolicy.build([], [], allowed))
    messages = set()
    for path in ["/etc/passwd", "/etc/no-such-file", f"file://{tmp_path}/x.mp4", f"{allowed}/../../etc/passwd",
                 "/proc/self/environ"]:
        with pytest.raises(DestinationRefused) as info:
            check_source(path, config)
        messages.add(str(info.value))
    assert messages == {f"file sources must be under {allowed}"}


def test_check_source_when_a_symlink_in_the_dir_points_out_refuses(tmp_path, make_h264):
    allowed = tmp_path / "videos"
    allowed.mkdir()
    outside = make_h264(tmp_path / "outside.mp4", seconds=1.0)
    (allowed / "link.mp4").symlink_to(outside)
    config = IngestConfig(destinations=DestinationPolicy.build([], [], allowed))
    with pytest.raises(DestinationRefused, match="file sources must be under"):
        check_source(str(allowed / "link.mp4"), config)


def test_check_source_when_file_is_in_the_dir_accepts_it_resolved(tmp_path, make_h264):
    allowed = tmp_path / "videos"
    clip = make_h264(allowed.mkdir() or allowed / "a.mp4", seconds=1.0)
    config = IngestConfig(destinations=DestinationPolicy.build([], [], allowed))
    assert check_source("a.mp4", config).path == str(clip)
    assert check_source(f"file://{allowed}/./a.mp4", config).path == str(clip)


@pytest.mark.parametrize("file_dir", [None, "videos"])
def test_check_source_when_path_starts_with_tilde_user_does_not_expand_it(tmp_path, file_dir):
    folder = None if file_dir is None else tmp_path / file_dir
    if folder is not None:
        folder.mkdir()
    config = IngestConfig(destinations=DestinationPolicy.build([], [], folder))
    with pytest.raises(DestinationRefused) as info:
        check_source("~nosuchuser/x", config)
    expected = FILES_DISABLED if folder is None else f"no such file under {folder}: ~nosuchuser/x"
    assert str(info.value) == expected


def test_stream_ingest_when_a_looping_file_is_swapped_for_a_link_out_fails_at_the_next_connect(tmp_path, make_h264):
    # given a looping file source under the allowed folder, ingesting
    allowed = tmp_path / "videos"
    allowed.mkdir()
    clip = make_h264(allowed / "a.mp4", seconds=1.0)
    events, chunked = [], threading.Event()
    config = IngestConfig(destinations=DestinationPolicy.build([], [], allowed), loop=True, realtime=False,
                          sample_fps=5.0, chunk_seconds=0.5, frame_size=32)
    ingest = StreamIngest("swap", str(clip), config, on_chunk=lambda c: chunked.set(), on_status=events.append)
    ingest.start()
    assert chunked.wait(20), events  # connected once: what follows is a reconnect
    # when the file is replaced by a symlink to a file outside the folder
    replacement = allowed / "tmp-link"
    replacement.symlink_to("/etc/passwd")
    replacement.replace(clip)
    # then the next open (a loop reconnects) refuses it and the stream fails with the generic reason
    finished = ingest.join(20)
    ingest.stop()
    assert finished, events
    assert events[-1].status is StreamStatus.FAILED and events[-1].reason == f"file sources must be under {allowed}"
