"""bench/ingest.py runs end to end on a tiny clip (the figures themselves are not asserted)."""

from __future__ import annotations

import json

from bench.ingest import BenchConfig, report, run
from ingest.entities import SkipMode


def test_bench_ingest_when_run_on_a_short_clip_reports_each_mode(tmp_path, capsys):
    # given a 2 s 480p clip with a keyframe every second
    config = BenchConfig(seconds=2.0, resolutions=("480p",), gops_s=(1.0,), modes=(SkipMode.NONE, SkipMode.AUTO),
                         workdir=tmp_path)
    # when benchmarked
    results = run(config)
    report(results, config)
    # then both modes sampled the same frames and skipping decoded fewer; the last line is JSON
    none, auto = results
    assert none.frames_sampled == auto.frames_sampled == 2
    assert auto.frames_decoded < none.frames_decoded == 60
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "ingest"
