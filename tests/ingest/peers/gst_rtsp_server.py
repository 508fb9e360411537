#!/usr/bin/python3
"""A real RTSP server for tests, on GStreamer's gst-rtsp-server (Debian's python3-gi, not the venv).

Run with /usr/bin/python3. Debian packages: python3-gst-1.0 gir1.2-gst-rtsp-server-1.0
gstreamer1.0-plugins-{base,good,bad,ugly}. Serves an endless live ``videotestsrc`` encoded with x264
(a keyframe every ``--gop`` frames) at rtsp://127.0.0.1:PORT/live over TCP and UDP, and prints
``READY <port>`` once listening. See ../shared/research/stream-clients.md section 1.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=30)
    args = parser.parse_args()
    Gst.init(None)
    width, height = args.size.split("x")
    launch = (
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={args.fps}/1 ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={args.gop} bitrate=500 ! video/x-h264,profile=baseline "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        sys.stderr.write("attach failed\n")
        sys.exit(1)
    sys.stdout.write(f"READY {server.get_bound_port()}\n")
    sys.stdout.flush()
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
