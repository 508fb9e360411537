"""Real peers for the ingest tests: an RTSP server process, a headless browser."""
