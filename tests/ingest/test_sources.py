"""Source checks, URL redaction and opening with PyAV."""

from __future__ import annotations

import pytest

from ingest.entities import IngestConfig
from ingest.errors import SourceInvalid, SourceRefused, SourceUnavailable
from ingest.sources import SourceKind, av_options, check_source, open_source, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("https://token@example.com/a.m3u8", "https://***@example.com/a.m3u8"),
        ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
        ("/videos/clip.mp4", "/videos/clip.mp4"),
    ],
)
def test_redact_url_when_credentials_present_hides_them(url, shown):
    assert redact_url(url) == shown


def test_redact_text_when_error_message_quotes_url_hides_credentials():
    text = "ConnectionRefusedError: [Errno 111] Connection refused: 'rtsp://u:p%40ss@cam/x'"
    assert redact_text(text) == "ConnectionRefusedError: [Errno 111] Connection refused: 'rtsp://***@cam/x'"


def test_check_source_when_scheme_not_allowed_names_the_allowed_ones():
    with pytest.raises(SourceRefused, match=r"scheme 'http' is not allowed \(allowed: rtsp\)"):
        check_source("http://cam/x", IngestConfig(allowed_schemes=("rtsp",)))


def test_check_source_when_url_has_no_host_refuses_without_credentials():
    with pytest.raises(SourceRefused) as info:
        check_source("rtsp://user:pw@/x", IngestConfig())
    assert "has no host" in str(info.value)
    assert "pw" not in str(info.value) and "user" not in str(info.value)


def test_check_source_when_file_exists_and_files_allowed_accepts(make_h264, tmp_path):
    path = make_h264(tmp_path / "a.mp4", seconds=1.0)
    source = check_source(f"file://{path}", IngestConfig())
    assert source.kind is SourceKind.FILE and source.path == str(path) and not source.is_live


@pytest.mark.parametrize("config", [IngestConfig(allow_files=False), IngestConfig(allowed_schemes=("rtsp",))])
def test_check_source_when_files_disabled_refuses(make_h264, tmp_path, config):
    path = make_h264(tmp_path / "a.mp4", seconds=1.0)
    with pytest.raises(SourceRefused, match="local files are disabled"):
        check_source(str(path), config)


def test_av_options_when_rtsp_sets_transport_and_timeout_in_microseconds():
    source = check_source("rtsp://cam/x", IngestConfig(rtsp_transport="udp", stall_seconds=4.0))
    options = av_options(source, IngestConfig(rtsp_transport="udp", stall_seconds=4.0))
    assert options["rtsp_transport"] == "udp" and options["timeout"] == "2000000"


def test_open_source_when_nothing_listens_raises_unavailable_without_credentials():
    source = check_source("rtsp://bob:pa55@127.0.0.1:1/live", IngestConfig())
    with pytest.raises(SourceUnavailable) as info:
        open_source(source, IngestConfig(open_timeout_s=2.0))
    assert "Connection refused" in str(info.value) and "pa55" not in str(info.value)
    assert "pa55" not in repr(source) and "pa55" not in str(source)


def test_open_source_when_device_is_lavfi_opens_a_live_source():
    # given a capture "device" served by lavfi (no /dev/video* on these machines)
    config = IngestConfig(allow_devices=True, device_format="lavfi")
    source = check_source("device://testsrc2=size=64x48:rate=10", config)
    # when opened
    container = open_source(source, config)
    # then it has video and counts as live
    try:
        assert source.is_live and container.streams.video[0].codec_context.width == 64
    finally:
        container.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://u:p@ss@host/x", "rtsp://***@host/x"),
        ("rtsp://u:p/ss@host/x", "rtsp://***@host/x"),
        ("rtsp://u:p ss@host/x", "rtsp://***@host/x"),
        ("http://u:p%40ss@h/x", "http://***@h/x"),
        ("rtsp://host/x?password=secret", "rtsp://host/x?password=***"),
        ("rtsp://host/x?a=1&PWD=p@ss&b=2", "rtsp://host/x?a=1&PWD=***&b=2"),
        ("http://h/live.m3u8?user=bob&Token=abc", "http://h/live.m3u8?user=***&Token=***"),
        ("http://h/x?api_key=k1;auth=k2", "http://h/x?api_key=***;auth=***"),
        ("https://h/x#access_token=zz&secret=yy", "https://h/x#access_token=***&secret=***"),
        ("failed: 'rtsp://a:b@c/x' then rtsp://d:e@f/y", "failed: 'rtsp://***@c/x' then rtsp://***@f/y"),
    ],
)
def test_redact_text_when_credentials_are_awkward_hides_them_whole(url, shown):
    assert redact_text(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://127.0.0.1:6390/x\r\nSET vidmem_ssrf pwned\r\nECHO", "rtsp://cam/x\n", "rtsp://cam/\x00x",
        "rtsp://cam/x\x7f", "rtsp://cam/x\x85", "rtsp://cam/\u200bx", "rtsp://cam/\u202ex", " rtsp://cam/x",
        "rtsp://cam/x ", "rtsp://cam/a b", "rtsp://cam/\tx", "rtsp://cam/\u00a0x", "rtsp://cam/x%0d%0aSET",
        "rtsp://u%0a:p@cam/x", "/videos/a\nb.mp4",
    ],
)
def test_check_source_when_url_has_control_or_space_characters_refuses_without_stripping(url):
    with pytest.raises(SourceInvalid, match="must not contain"):
        check_source(url, IngestConfig())


def test_av_options_when_http_follows_no_redirect_and_files_reach_no_network():
    config = IngestConfig()
    http = av_options(check_source("http://cam/x.m3u8", config), config)
    assert http["max_redirects"] == "0" and "file" not in http["protocol_whitelist"].split(",")
    assert av_options(check_source(__file__, config), config) == {"protocol_whitelist": "file"}
