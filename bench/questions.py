"""Multiple-choice questions with exact letter answers about a generated stream.

Questions are asked at ``now`` = the last of the frame times the model is shown, about what those
frames show (an object counts as seen only if it is visible at one of the frame times, and it
"appeared" at ``t_in`` only if that lies inside the shown span). Every question carries its type,
how far back its evidence lies (``evidence_s``) and its chance level (1 / number of choices).

Types: present, recall, count, order, attribute, direction, minute (see ``GENERATORS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from bench.streamgen import COLOURS, DIRECTIONS, SHAPES, ObjectTrack, Stream

LETTERS = "ABCD"
INSTRUCTION = "Answer with the letter."
WORDS_INSTRUCTION = "Answer with one option."
ALL_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
COUNT_CHOICES = ("0", "1", "2", "3")


@dataclass(frozen=True)
class Question:
    qtype: str
    stem: str
    choices: tuple[str, ...]
    answer: str  # letter
    now: float  # media time the question is asked at (seconds)
    evidence_s: float  # how far back from now the evidence lies
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)

    @property
    def text(self) -> str:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return f"{self.stem}\n{options}\n{INSTRUCTION}"

    @property
    def answer_text(self) -> str:
        return self.choices[LETTERS.index(self.answer)]

    @property
    def prompt(self) -> str:
        """The question as vidmem-tiny v2 reads it: answered with an option's words, scored by option likelihood."""
        return f"{self.stem}\nOptions: {', '.join(self.choices)}.\n{WORDS_INSTRUCTION}"


@dataclass
class View:
    """What the model is shown: tracks seen at the frame times, and helpers over them."""

    tracks: list[ObjectTrack]
    times: np.ndarray  # [F] seconds, increasing
    rng: np.random.Generator

    @property
    def now(self) -> float:
        return float(self.times[-1])

    @property
    def step(self) -> float:
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0

    def seen_at(self, trk: ObjectTrack) -> np.ndarray:
        return self.times[(self.times >= trk.t_in) & (self.times < trk.t_out)]

    def seen(self) -> list[ObjectTrack]:
        return [trk for trk in self.tracks if len(self.seen_at(trk))]

    def appeared(self) -> list[ObjectTrack]:
        """Objects whose appearance lies inside the shown span and which were seen."""
        return [trk for trk in self.seen() if self.times[0] < trk.t_in <= self.now]

    def unique(self, objs: list[ObjectTrack], key: Callable[[ObjectTrack], object]) -> list[ObjectTrack]:
        keys = [key(o) for o in self.seen()]
        return [o for o in objs if keys.count(key(o)) == 1]

    def pick(self, items: Sequence):  # type: ignore[no-untyped-def]
        return items[int(self.rng.integers(len(items)))]


def _one_per_shape(view: View, correct: str, pool: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """One choice per shape, in ``SHAPES`` order: the correct object in its shape's slot, the other
    slots a random colour of their shape drawn from pool (None when a shape has no name left).

    The letter thus names the answer's shape, as in the fixed-choice types: a model has to tell which
    object it saw (colour and shape together when several share a shape in view), not to find a name
    in a shuffled list -- an in-context pointer a CPU-trained tiny model cannot learn in its budget.
    """
    choices = []
    for shape in SHAPES:
        if correct.endswith(f" {shape}"):
            choices.append(correct)
            continue
        names = [n for n in pool if n.endswith(f" {shape}")]
        if not names:
            return None
        choices.append(view.pick(names))
    return tuple(choices), LETTERS[choices.index(correct)]


def _fixed(choices: Sequence[str], correct: str) -> tuple[tuple[str, ...], str]:
    return tuple(choices), LETTERS[list(choices).index(correct)]


def _ago(seconds: float) -> str:
    if seconds >= 120:
        return f"{round(seconds / 60)} minutes ago"
    return f"{round(seconds)} seconds ago"


def q_present(view: View) -> Question | None:
    here = [t for t in view.tracks if t.visible(view.now)]
    if not here:
        return None
    target = view.pick(here)
    pool = [n for n in ALL_NAMES if n not in {t.name for t in here}]
    picked = _one_per_shape(view, target.name, pool)
    if picked is None:
        return None
    choices, ans = picked
    return Question("present", "What is in view now?", choices, ans, view.now, 0.0, {"object": target.oid})


def q_recall(view: View) -> Question | None:
    tol = max(view.step, 1.0)
    cands = [t for t in view.appeared() if view.now - t.t_in >= view.step]
    cands = [t for t in cands if all(o is t or abs(o.t_in - t.t_in) >= tol for o in view.appeared())]
    if not cands:
        return None
    target = view.pick(cands)
    ago = view.now - target.t_in
    if ago >= 120:  # said in whole minutes: near a whole minute, and nothing else near that minute
        mark = 60 * round(ago / 60)
        if abs(ago - mark) > 15 or any(
            o is not target and abs(view.now - o.t_in - mark) <= 45 for o in view.appeared()
        ):
            return None
    near = {o.name for o in view.tracks if abs(o.t_in - target.t_in) < tol}
    pool = [n for n in ALL_NAMES if n not in near]
    picked = _one_per_shape(view, target.name, pool)
    if picked is None:
        return None
    choices, ans = picked
    stem = f"What appeared {_ago(ago)}?"
    return Question("recall", stem, choices, ans, view.now, ago, {"object": target.oid})


def q_count(view: View) -> Question | None:
    span = view.now - float(view.times[0])
    ins = [t.t_in for t in view.appeared()]
    options = []
    for n_steps in range(2, len(view.times)):
        window = n_steps * view.step
        if window > span + 1e-6:
            break
        edge = view.now - window
        if all(abs(t - edge) >= view.step / 2 for t in ins):
            count = sum(t > edge for t in ins)
            if count <= 3:
                options.append((window, count))
    if not options:
        return None
    window, count = view.pick(options)
    choices, ans = _fixed(COUNT_CHOICES, str(count))
    unit = f"{round(window / 60)} minutes" if window >= 120 else f"{round(window)} seconds"
    stem = f"How many objects appeared in the last {unit}?"
    return Question("count", stem, choices, ans, view.now, window, {"count": count})


def q_order(view: View) -> Question | None:
    objs = view.unique(view.appeared(), lambda t: t.name)
    pairs = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :] if abs(a.t_in - b.t_in) >= 2 * view.step]
    if not pairs:
        return None
    a, b = view.pick(pairs)
    if view.rng.random() < 0.5:
        a, b = b, a
    first = a if a.t_in < b.t_in else b
    choices, ans = _fixed((a.name, b.name), first.name)
    stem = f"Which appeared first, the {a.name} or the {b.name}?"
    evidence = view.now - min(a.t_in, b.t_in)
    return Question("order", stem, choices, ans, view.now, evidence, {"objects": [a.oid, b.oid]})


def q_attribute(view: View) -> Question | None:
    if view.rng.random() < 0.5:
        return _colour_of_mover(view) or _shape_of_leaver(view)
    return _shape_of_leaver(view) or _colour_of_mover(view)


def _colour_of_mover(view: View) -> Question | None:
    movers = [t for t in view.seen() if len(view.seen_at(t)) >= 2]
    cands = [t for t in movers if [(o.shape, o.direction) for o in view.seen()].count((t.shape, t.direction)) == 1]
    if not cands:
        return None
    target = view.pick(cands)
    choices, ans = _fixed(tuple(COLOURS), target.colour)
    stem = f"What colour was the {target.shape} that moved {target.direction}?"
    evidence = view.now - float(view.seen_at(target)[-1])
    return Question("attribute", stem, choices, ans, view.now, evidence, {"object": target.oid})


def _shape_of_leaver(view: View) -> Question | None:
    left = [t for t in view.seen() if t.t_out <= view.now]
    if not left:
        return None
    last = max(t.t_out for t in left)
    lasts = [t for t in left if t.t_out == last]
    if len(lasts) != 1 or any(last - view.step < t.t_out < last for t in left):
        return None
    target = lasts[0]
    choices, ans = _fixed(SHAPES, target.shape)
    stem = "What shape was the last object to leave?"
    return Question("attribute", stem, choices, ans, view.now, view.now - target.t_out, {"object": target.oid})


def q_direction(view: View) -> Question | None:
    cands = view.unique([t for t in view.seen() if len(view.seen_at(t)) >= 2], lambda t: t.name)
    if not cands:
        return None
    target = view.pick(cands)
    choices, ans = _fixed(tuple(DIRECTIONS), target.direction)
    stem = f"Which way did the {target.name} move?"
    evidence = view.now - float(view.seen_at(target)[-1])
    return Question("direction", stem, choices, ans, view.now, evidence, {"object": target.oid})


# the first minute of a clip holds an appearance more often than later ones (nothing is in view at 0, so
# the first objects come in without waiting for one to leave): measured 56 of 154 honest answers were
# minute 1 before this factor, which brings it to a quarter
MINUTE_ONE_KEEP = 0.55


def q_minute(view: View, uniform_minute: bool = False) -> Question | None:
    """``uniform_minute`` (honest): draw the answer minute first, so that early minutes, which hold more
    appearances in a clip starting at 0, are not the likelier answer."""
    last_minute = int(view.now // 60) + 1
    if last_minute < 4:
        return None
    tol = max(view.step, 1.0)
    cands = view.unique(view.appeared(), lambda t: t.name)
    cands = [t for t in cands if tol <= t.t_in % 60 <= 60 - tol]
    if uniform_minute:
        wanted = int(view.rng.integers(1, last_minute + 1))
        cands = [t for t in cands if int(t.t_in // 60) + 1 == wanted]
        if wanted == 1 and view.rng.random() >= MINUTE_ONE_KEEP:
            return None
    if not cands:
        return None
    target = view.pick(cands)
    minute = int(target.t_in // 60) + 1
    lo = max(1, minute - 3)
    first = int(view.rng.integers(lo, min(minute, last_minute - 3) + 1))
    names = [f"minute {m}" for m in range(first, first + 4)]
    choices, ans = _fixed(names, f"minute {minute}")
    stem = f"In which minute did the {target.name} appear?"
    return Question("minute", stem, choices, ans, view.now, view.now - target.t_in, {"object": target.oid})


GENERATORS: dict[str, Callable[[View], Question | None]] = {
    "present": q_present,
    "recall": q_recall,
    "count": q_count,
    "order": q_order,
    "attribute": q_attribute,
    "direction": q_direction,
    "minute": q_minute,
}
QTYPES = tuple(GENERATORS)
CHANCE = {
    "present": 0.25,
    "recall": 0.25,
    "count": 0.25,
    "order": 0.5,
    "attribute": 0.25,
    "direction": 0.25,
    "minute": 0.25,
}


def make_questions(
    tracks: list[ObjectTrack],
    times: Sequence[float],
    seed: int,
    qtypes: Sequence[str] = QTYPES,
    honest: bool = False,
) -> list[Question]:
    """One question per requested type that can be asked about these frames (types that cannot are skipped).

    ``honest``: the options are shuffled with the question's seeded RNG and answers are balanced per
    template (see ``balanced``), so neither the option order nor the wording gives the answer away; the
    default keeps the fixed option order the letter-trained vidmem-tiny v1 was trained on."""
    view = View(list(tracks), np.asarray(times, dtype=np.float64), np.random.default_rng([seed, 3]))
    out = []
    for qtype in qtypes:
        if qtype not in GENERATORS:
            raise ValueError(f"unknown question type {qtype!r}; valid: {QTYPES}")
        question = (HONEST.get(qtype, GENERATORS[qtype]) if honest else GENERATORS[qtype])(view)
        if question is not None and honest:
            question = balanced(question, view.rng)
        if question is not None:
            out.append(question)
    return out


def shuffled(question: Question, rng: np.random.Generator) -> Question:
    """The same question with its options in a random order (the answer letter follows its option)."""
    order = rng.permutation(len(question.choices))
    choices = tuple(question.choices[i] for i in order)
    answer = LETTERS[choices.index(question.answer_text)]
    return Question(question.qtype, question.stem, choices, answer, question.now, question.evidence_s, question.meta)


def balanced(question: Question, rng: np.random.Generator) -> Question:
    """Shuffle the options (every honest generator already draws its answer uniformly, see ``q_count_seen``)."""
    return shuffled(question, rng)


PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


@lru_cache(maxsize=1)
def count_keep() -> np.ndarray:
    """keep [M, 4]: probability of keeping a count question whose answer is c when m objects were seen.

    ``q_count_seen`` draws the answer c uniformly, then an attribute value seen exactly c times; c is
    only available when some value has that count, which depends on m (with 12 objects a colour seen 0
    times is rare). Keeping with min_c' avail(m, c') / avail(m, c) makes every answer equally likely at
    every m, so neither the wording nor the clip length predicts it (m where some count is impossible:
    never asked). avail is simulated with names drawn uniformly, as ``streamgen`` draws them."""
    rng = np.random.default_rng(0)
    keep = np.zeros((COUNT_MAX_SEEN + 1, 4))
    for m in range(COUNT_MAX_SEEN + 1):
        values = rng.integers(0, len(SHAPES), size=(4000, m))  # a colour (or a shape) of each seen object
        counts = np.stack([(values == v).sum(1) for v in range(len(SHAPES))], 1)  # [draws, 4 values]
        avail = np.array([(counts == c).any(1).mean() for c in range(4)])
        if avail.min() > 0.02:
            keep[m] = avail.min() / avail
    return keep


COUNT_MAX_SEEN = 24


def q_count_seen(view: View) -> Question | None:
    """How many objects of one colour (or shape) were seen: answer drawn uniformly from 0..3 (honest count)."""
    seen = view.seen()
    if len(seen) > COUNT_MAX_SEEN:
        return None
    kind = "colour" if view.rng.random() < 0.5 else "shape"
    values = list(COLOURS) if kind == "colour" else list(SHAPES)
    count = int(view.rng.integers(4))
    matching = [v for v in values if sum(getattr(t, kind) == v for t in seen) == count]
    if not matching or view.rng.random() >= count_keep()[len(seen), count]:
        return None
    value = view.pick(matching)
    counted = [t for t in seen if getattr(t, kind) == value]
    what = f"{value} objects" if kind == "colour" else PLURALS[value]
    first = min((float(view.seen_at(t)[0]) for t in counted), default=float(view.times[0]))
    choices, ans = _fixed(COUNT_CHOICES, str(count))
    meta = {"count": count, "objects": [t.oid for t in counted]}
    return Question("count", f"How many {what} did you see?", choices, ans, view.now, view.now - first, meta)


# honest variants: the answer is drawn uniformly before the question is built around it
HONEST: dict[str, Callable[[View], Question | None]] = {
    "count": lambda view: q_count_seen(view),
    "minute": lambda view: q_minute(view, uniform_minute=True),
}


def demo_questions(stream: Stream, honest: bool = False) -> list[Question]:
    """Questions for the demo clip, asked at its last whole second (sampled at 1 fps).

    ``honest`` (a model answering in words): one question of every type the clip supports, options shuffled,
    drawn with the clip's seed and the next ones until each supported type has one."""
    times = np.arange(0.0, stream.spec.seconds, 1.0)
    if not honest:
        return make_questions(stream.tracks, times, seed=stream.spec.seed, qtypes=("present", "direction", "order"))
    found: dict[str, Question] = {}
    for k in range(DEMO_SEED_TRIES):
        for q in make_questions(stream.tracks, times, seed=stream.spec.seed + k, honest=True):
            found.setdefault(q.qtype, q)
    return [found[t] for t in QTYPES if t in found]


DEMO_SEED_TRIES = 30
