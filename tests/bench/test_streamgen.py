"""The stream generator: deterministic per seed, lazy, H.264 output and a JSON event log."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import av
import numpy as np

from bench.streamgen import COLOURS, Stream, StreamSpec, demo_clip


def _digest(stream: Stream, times: list[float]) -> str:
    h = hashlib.sha256()
    for t in times:
        h.update(stream.render(t).tobytes())
    return h.hexdigest()


def test_stream_when_same_seed_then_identical_frames_and_log() -> None:
    spec = StreamSpec(seed=11, seconds=20, width=96, height=80, distractors=2, pan_speed=0.02)
    a, b = Stream(spec), Stream(spec)
    times = [0.0, 3.5, 9.0, 19.75]
    assert _digest(a, times) == _digest(b, times), "same seed must render the same frames"
    assert a.event_log() == b.event_log(), "same seed must give the same event log"


def test_stream_when_other_seed_then_different() -> None:
    a, b = Stream(StreamSpec(seed=1)), Stream(StreamSpec(seed=2))
    assert a.event_log()["objects"] != b.event_log()["objects"]
    assert _digest(a, [5.0]) != _digest(b, [5.0])


def test_stream_when_hours_long_then_frames_are_lazy() -> None:
    stream = Stream(StreamSpec(seed=3, seconds=3 * 3600, fps=25, width=64, height=64))
    frames = stream.frames(t0=7000.0)
    assert isinstance(frames, types.GeneratorType), "frames must be produced lazily"
    t, frame = next(frames)
    assert t == 7000.0 and frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert stream.tracks[-1].t_in > 3 * 3600 - 60, "objects are scheduled over the whole stream"


def test_stream_when_object_visible_then_its_colour_is_drawn() -> None:
    stream = Stream(StreamSpec(seed=4, seconds=30))
    for t in np.arange(0.0, 30.0, 1.0):
        frame = stream.render(float(t))
        for trk in stream.visible(float(t)):
            hits = np.all(frame == np.array(COLOURS[trk.colour], dtype=np.uint8), axis=-1).sum()
            assert hits > 20, f"{trk.name} should be drawn at t={t}"


def test_event_log_when_written_then_json_round_trips(tmp_path: Path) -> None:
    stream = Stream(StreamSpec(seed=5, seconds=40))
    log = json.loads(stream.write_event_log(tmp_path / "log.json").read_text())
    assert log["spec"]["seed"] == 5
    kinds = {e["kind"] for e in log["events"]}
    assert kinds == {"appear", "leave"}
    assert [e["t"] for e in log["events"]] == sorted(e["t"] for e in log["events"]), "events in time order"


def test_write_h264_when_decoded_then_matches_rendered_frames(tmp_path: Path) -> None:
    stream = Stream(StreamSpec(seed=6, seconds=2, fps=4, width=64, height=48))
    path = stream.write_h264(tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        assert vstream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 8, "2 s at 4 fps"
    for (_, rendered), got in zip(stream.frames(), decoded, strict=True):
        err = np.abs(rendered.astype(np.int16) - got.astype(np.int16)).mean()
        assert err < 8, f"decoded frame differs from the rendered one by {err:.1f} on average"


def test_demo_clip_when_made_then_questions_have_letter_answers(tmp_path: Path) -> None:
    path, questions = demo_clip(tmp_path, seconds=6, seed=7)
    assert path.exists() and (tmp_path / "synthetic-7.json").exists()
    assert questions and all(answer in "ABCD" for _, answer in questions)


def test_demo_clip_when_words_then_one_question_per_supported_type_with_answers_in_words(tmp_path: Path) -> None:
    path, questions = demo_clip(tmp_path, seconds=16, seed=7, words=True)
    assert path.exists() and len(questions) >= 5, f"at least 5 question types, got {len(questions)}"
    stems = [text.splitlines()[0] for text, _ in questions]
    assert len(set(stems)) == len(stems)
    for text, answer in questions:
        assert "Options:" in text and answer in text.split("Options: ")[1], f"{answer!r} is not an option of {text!r}"
        assert answer not in ("A", "B", "C", "D"), "answers in words, not letters"


def test_demo_is_correct_when_words_then_whole_option_must_match() -> None:
    from vidmem.demo import is_correct

    assert is_correct("red circle", "red circle") and is_correct(" Red circle.", "red circle")
    assert not is_correct("minute 12", "minute 1") and not is_correct("red", "red circle")
    assert is_correct("B. blue", "B") and not is_correct(None, "B") and not is_correct("A", "B")
    assert is_correct("2", "2") and not is_correct("23", "2"), "a count is a word, not a letter"
