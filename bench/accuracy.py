"""Accuracy of every registered compression method at fixed retentions (``vidmem bench accuracy``).

The yardstick is honest: options are shuffled and answers balanced per template (a text-only
predictor scores chance), multiple choice is scored by option likelihood (lm-evaluation-harness
style, ``evalkit.score_options``), and every table carries, from the same run and questions, the
uncompressed model, zero visual tokens (the blind floor), another clip's tokens and chance. Each
method's row gives its accuracy with a 95 % interval, the video contribution kept
= (acc - blind) / (full - blind) with a paired bootstrap interval, and an exact McNemar test
against the uncompressed model on the same questions.

Held-out clips (seeds never used in training) are encoded in 4-frame chunks, as ingest would.
Stage-1 methods run incrementally over the chunks (``init_state``/``update``); stage-2 methods
select from all the clip's tokens under a budget of ``retention * tokens`` for each question. The
uncompressed model sees every token. Reported like the papers' tables: accuracy, % of the
uncompressed accuracy, tokens kept, compression ms (median per clip for stage 1, per question
for stage 2) and prefill ms (median), overall and per question type; JSON and a PNG plot too.

Stage-1 methods without a ``ratio`` parameter are set to each retention by a knob: VTM through
its partition factor (``gamma = 1 / retention`` with every source merged), threshold methods
(dtd, adatp-local) by bisection of their threshold on calibration clips; the tokens they
actually keep are reported.

    vidmem bench accuracy --quick
    vidmem bench accuracy --model models/vidmem-tiny-v2 --methods fastv,visionzip --retentions 0.25,0.05
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.evalkit import (
    Scored,
    accuracy,
    concat_blocks,
    contribution_kept,
    encode_chunks,
    interval,
    load,
    mcnemar_p,
    median,
    per_type,
    question_text,
    score_options_many,
)
from bench.evalkit import score_options as score
from bench.tiny_data import HELDOUT_SEED_LIMIT, Clip, heldout_clips
from compression.pipeline import PipelineCache, PipelineSpec
from compression.registry import SelectContext, list_methods, method_info
from compression.tokens import TokenBlock, TokenSet

log = logging.getLogger(__name__)

RETENTIONS = (0.5, 0.25, 0.15, 0.10, 0.05)
SKIP = {"none"}  # the uncompressed row


@dataclass
class AccuracyConfig:
    model: str = "vidmem-tiny"
    clips: int = 112  # about 650 questions: the overall column's interval is within +-4 points
    first_seed: int = 50_000  # held-out: below the training seeds, apart from the model card's set
    retentions: tuple[float, ...] = RETENTIONS
    methods: tuple[str, ...] = ()  # empty: every registered method
    chunk_frames: int = 4
    frame_size: int = 128
    out_dir: str = "bench-results/accuracy"
    policies_dir: str = "models/policies"  # trained CaCoVID policy and VTM saliency, when shipped
    threads: int = 1
    dtype: str = "auto"


@dataclass
class Row:
    method: str
    stage: int
    retention: float
    spec: str
    scored: list[Scored] = field(default_factory=list)
    compress_ms: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class Prepared:
    clip: Clip
    blocks: list[TokenBlock]
    tokens: TokenSet


PIPELINES = PipelineCache()
"""The worker's pipeline code and cache: each stage-1 spec (and its weights) is built once per run."""
UNBOUNDED = 2**31 - 1  # the tables measure a method's retention alone: no memory consolidation, no LLM cap


def run_stage1(spec: str, blocks: list[TokenBlock]) -> tuple[TokenSet, float]:
    """What stage-1 ``spec`` keeps of a clip's chunks, fed in order as ingest feeds them, and its time (ms)."""
    pipeline = PIPELINES.get(PipelineSpec(spec, UNBOUNDED, "none", UNBOUNDED))
    state = pipeline.init()
    outs = []
    start = time.perf_counter()
    for block in blocks:
        state, out = pipeline.step(state, block)
        outs.append(out)
    return TokenSet.concat(outs), (time.perf_counter() - start) * 1e3


def _retention(spec: str, prepared: list[Prepared]) -> float:
    kept = sum(len(run_stage1(spec, p.blocks)[0]) for p in prepared)
    return kept / max(1, sum(len(p.tokens) for p in prepared))


def _threshold_field(name: str) -> str | None:
    for f in dataclasses.fields(method_info(name).cls.Params):
        if f.type in (float, "float") and isinstance(f.default, float) and 0.0 < f.default <= 1.0:
            return f.name
    return None


def stage1_spec(name: str, retention: float, calib: list[Prepared]) -> str:
    """A spec of stage-1 method ``name`` that keeps about ``retention`` of the tokens."""
    fields = {f.name for f in dataclasses.fields(method_info(name).cls.Params)}
    if "ratio" in fields:
        return f"{name}:ratio={retention}"
    if name == "vtm":
        return f"vtm:merge_ratio=1.0,gamma={1.0 / retention:.4f}"
    knob = _threshold_field(name)
    if knob is None:
        return name
    lo, hi = 0.0, 1.0
    rising = _retention(f"{name}:{knob}={hi}", calib) >= _retention(f"{name}:{knob}={lo}", calib)
    for _ in range(12):
        mid = (lo + hi) / 2
        above = _retention(f"{name}:{knob}={mid:.5f}", calib) > retention
        lo, hi = (lo, mid) if above == rising else (mid, hi)
    return f"{name}:{knob}={(lo + hi) / 2:.5f}"


def prepare(model, cfg: AccuracyConfig) -> list[Prepared]:  # type: ignore[no-untyped-def]
    clips = heldout_clips(cfg.clips, cfg.frame_size, first_seed=cfg.first_seed, honest=True)
    out = []
    for clip in clips:
        blocks = encode_chunks(model, clip.frames, clip.times, cfg.chunk_frames)
        out.append(Prepared(clip, blocks, concat_blocks(blocks)))
    return out


def eval_stage1(model, row: Row, prepared: list[Prepared]) -> None:  # type: ignore[no-untyped-def]
    for p in prepared:
        kept, ms = run_stage1(row.spec, p.blocks)
        row.compress_ms.append(ms)
        row.scored += score_options_many(model, p.clip.questions, kept)


def eval_stage2(model, row: Row, prepared: list[Prepared]) -> None:  # type: ignore[no-untyped-def]
    method = PIPELINES.get(PipelineSpec("none", UNBOUNDED, row.spec, UNBOUNDED)).stage2  # budgets vary per clip
    for p in prepared:
        budget = max(1, round(row.retention * len(p.tokens)))
        for i, q in enumerate(p.clip.questions):
            start = time.perf_counter()
            kept = method.select(p.tokens, budget, SelectContext(question_text(model, q), model, seed=i))
            row.compress_ms.append((time.perf_counter() - start) * 1e3)
            row.scored.append(score(model, q, kept))


def learned_artefacts(cfg: AccuracyConfig) -> dict[str, str]:
    """Spec parameters of the learned methods whose trained files exist for this model."""
    model = Path(cfg.model).name
    found = {}
    policy = Path(cfg.policies_dir) / f"cacovid-{model}.pt"
    if policy.exists():
        found["cacovid"] = f"policy_path={policy}"
    saliency = Path(cfg.policies_dir) / f"vtm-saliency-{model}.pt"
    if saliency.exists():
        found["vtm-learnable"] = f"target=learnable,saliency_path={saliency}"
    return found


def plan_rows(cfg: AccuracyConfig, calib: list[Prepared]) -> list[Row]:
    names = cfg.methods or tuple(n for n in list_methods() if n not in SKIP)
    learned = learned_artefacts(cfg)
    rows = []
    for name in names:
        for stage in method_info(name).stages:
            for r in cfg.retentions:
                try:
                    spec = stage1_spec(name, r, calib) if stage == 1 else name
                except Exception as exc:  # noqa: BLE001 - a method that cannot be set up is reported, not fatal
                    rows.append(Row(name, stage, r, name, error=f"{type(exc).__name__}: {exc}"))
                    continue
                if stage == 2 and name in learned:
                    spec = f"{name}:{learned[name]}"
                rows.append(Row(name, stage, r, spec))
                if stage == 1 and name == "vtm" and "vtm-learnable" in learned:
                    rows.append(Row("vtm-learnable", 1, r, f"{spec},{learned['vtm-learnable']}"))
    return rows


def evaluate_row(model, row: Row, prepared: list[Prepared]) -> None:  # type: ignore[no-untyped-def]
    if row.error:
        return
    try:
        (eval_stage1 if row.stage == 1 else eval_stage2)(model, row, prepared)
    except Exception as exc:  # noqa: BLE001 - e.g. a learned method without its weights
        row.error = f"{type(exc).__name__}: {exc}"
        log.warning("%s (stage %d) failed: %s", row.method, row.stage, row.error)


def summarise(row: Row, controls: dict[str, list[Scored]]) -> dict:
    """The row's accuracy with its interval, % of the uncompressed accuracy, video contribution kept (with a
    paired bootstrap interval) and McNemar's p against the uncompressed model on the same questions."""
    acc = accuracy(row.scored)
    hits = [s.correct for s in row.scored]
    full = [s.correct for s in controls["uncompressed"]]
    blind = [s.correct for s in controls["zero visual tokens"]]
    paired = len(hits) == len(full) and not row.error
    kept, kept_lo, kept_hi = contribution_kept(hits, full, blind) if paired else (float("nan"),) * 3
    base_acc = accuracy(controls["uncompressed"])
    return {
        "method": row.method,
        "stage": row.stage,
        "retention": row.retention,
        "spec": row.spec,
        "accuracy": acc,
        "interval": interval(hits),
        "pct_of_uncompressed": 100 * acc / base_acc if base_acc else float("nan"),
        "contribution_kept": kept,
        "contribution_interval": (kept_lo, kept_hi),
        "p_vs_uncompressed": mcnemar_p(hits, full) if paired else float("nan"),
        "tokens_kept": float(torch.tensor([s.visual_tokens for s in row.scored], dtype=torch.float).mean())
        if row.scored
        else float("nan"),
        "compress_ms": median(row.compress_ms),
        "prefill_ms": median([s.prefill_ms for s in row.scored]),
        "per_type": per_type(row.scored),
        "questions": len(row.scored),
        "error": row.error,
    }


def _cell(lo_hi: tuple[float, float], scale: float = 100) -> str:
    return f"{lo_hi[0] * scale:.0f}-{lo_hi[1] * scale:.0f}"


def print_tables(controls: list[dict], chance: float, results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = controls[0]
    table = Table(title=f"honest accuracy vs retention ({base['questions']} questions, chance {chance * 100:.1f}%, "
                        f"uncompressed {base['tokens_kept']:.0f} tokens, prefill {base['prefill_ms']:.1f} ms)")
    for col in ("method", "stage", "retention", "accuracy", "95% CI", "contribution kept", "95% CI ", "p vs full",
                "tokens kept", "compress ms", "prefill ms"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in [*controls, *results]:
        if r["error"]:
            table.add_row(r["method"], str(r["stage"]), f"{r['retention']:.0%}", f"[red]{r['error'][:60]}",
                          *([""] * 7))
            continue
        table.add_row(r["method"], str(r["stage"]), f"{r['retention']:.0%}", f"{r['accuracy'] * 100:.1f}",
                      _cell(r["interval"]), f"{r['contribution_kept'] * 100:.0f}%",
                      _cell(r["contribution_interval"]), f"{r['p_vs_uncompressed']:.3g}", f"{r['tokens_kept']:.1f}",
                      f"{r['compress_ms']:.2f}", f"{r['prefill_ms']:.1f}")
    types = sorted(base["per_type"])
    by_type = Table(title="accuracy per question type (%)")
    for col in ("method", "stage", "retention", *types):
        by_type.add_column(col)
    for r in [*controls, *results]:
        if not r["error"]:
            by_type.add_row(r["method"], str(r["stage"]), f"{r['retention']:.0%}",
                            *(f"{r['per_type'].get(t, float('nan')) * 100:.0f}" for t in types))
    console = Console(width=180)
    console.print(table)
    console.print(by_type)


def control_rows(model, prepared: list[Prepared]) -> dict[str, list[Scored]]:  # type: ignore[no-untyped-def]
    """The same questions with every token, with none, and with another held-out clip's tokens (the next clip
    with as many frames, so the prompt has the same shape)."""
    empty = TokenSet.empty(prepared[0].tokens.dim, prepared[0].tokens.grid)
    out: dict[str, list[Scored]] = {"uncompressed": [], "zero visual tokens": [], "another clip's tokens": []}
    for i, p in enumerate(prepared):
        ring = prepared[i + 1:] + prepared[:i]
        other = next((o for o in ring if len(o.clip.times) == len(p.clip.times)), ring[0] if ring else p)
        out["uncompressed"] += score_options_many(model, p.clip.questions, p.tokens)
        out["zero visual tokens"] += score_options_many(model, p.clip.questions, empty)
        out["another clip's tokens"] += score_options_many(model, p.clip.questions, other.tokens)
    return out


def plot(base: dict, blind: dict, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({(r["method"], r["stage"]) for r in results if not r["error"]}):
        pts = sorted((r["retention"], r["accuracy"]) for r in results if (r["method"], r["stage"]) == key)
        ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o", label=f"{key[0]} (s{key[1]})")
    ax.axhline(base["accuracy"] * 100, color="k", linestyle="--", label="uncompressed")
    ax.axhline(blind["accuracy"] * 100, color="grey", linestyle=":", label="zero visual tokens")
    ax.set_xscale("log")
    ax.set_xticks([r * 100 for r in RETENTIONS], [f"{r:.0%}" for r in RETENTIONS])
    ax.set_xlabel("retention of visual tokens")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: AccuracyConfig) -> dict:
    """Run the controls and every (method, retention), print the tables, write JSON and PNG; returns the report."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model = load(cfg.model, cfg.dtype)
    prepared = prepare(model, cfg)
    scored = control_rows(model, prepared)
    controls = [summarise(Row(name, 0, 1.0 if name == "uncompressed" else 0.0, "none", rows), scored)
                for name, rows in scored.items()]
    chance = float(sum(1 / len(q.choices) for p in prepared for q in p.clip.questions) / len(scored["uncompressed"]))
    rows = plan_rows(cfg, prepared[:4])
    for row in rows:
        evaluate_row(model, row, prepared)
        log.info("%s s%d %.0f%%: %.3f", row.method, row.stage, row.retention * 100, accuracy(row.scored))
    results = [summarise(r, scored) for r in rows]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": dataclasses.asdict(cfg),
        "uncompressed": controls[0],
        "controls": controls,
        "chance": chance,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=1))
    plot(controls[0], controls[1], results, out / "accuracy.png")
    print_tables(controls, chance, results)
    return report


QUICK = {"clips": 24, "retentions": (0.25, 0.05)}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def cli(
    model: Annotated[str, typer.Option(help="'vidmem-tiny' (shipped) or a model folder")] = "vidmem-tiny",
    seed: Annotated[int, typer.Option(help="held-out seed base (below 100000, never trained on)")] = (
        AccuracyConfig.first_seed),
    clips: Annotated[int, typer.Option(help="held-out clips (about 6 questions each)")] = AccuracyConfig.clips,
    methods: Annotated[str, typer.Option(help="comma-separated method names; empty: all registered")] = "",
    retentions: Annotated[str, typer.Option(help="comma-separated retention ratios")] = ",".join(
        str(r) for r in RETENTIONS),
    quick: Annotated[bool, typer.Option(help="24 clips at 25 % and 5 % only (a smoke run, wide intervals)")] = False,
    out_dir: Annotated[str, typer.Option(help="JSON and PNG go here")] = "bench-results/accuracy",
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    """Honest accuracy of every compression method at 50/25/15/10/5% retention on held-out clips, with controls."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if seed + clips > HELDOUT_SEED_LIMIT:
        raise typer.BadParameter(f"held-out seeds must stay below {HELDOUT_SEED_LIMIT}", param_hint="--seed")
    cfg = AccuracyConfig(model=model, first_seed=seed, clips=clips, methods=tuple(filter(None, methods.split(","))),
                         retentions=_floats(retentions), out_dir=out_dir, threads=threads)
    if quick:
        cfg = dataclasses.replace(cfg, **QUICK)
    report = run(cfg)
    print(json.dumps(final_line(report, out_dir)))


def final_line(report: dict, out_dir: str) -> dict:
    """The one JSON line a script reads: the controls, chance, question count and per-type accuracy."""
    controls = {c["method"]: c for c in report["controls"]}
    ok = [r for r in report["results"] if not r["error"]]
    return {
        "uncompressed_accuracy": controls["uncompressed"]["accuracy"],
        "uncompressed_interval": controls["uncompressed"]["interval"],
        "blind_accuracy": controls["zero visual tokens"]["accuracy"],
        "other_clip_accuracy": controls["another clip's tokens"]["accuracy"],
        "chance": report["chance"],
        "questions": controls["uncompressed"]["questions"],
        "per_type": controls["uncompressed"]["per_type"],
        "blind_per_type": controls["zero visual tokens"]["per_type"],
        "configs": len(ok),
        "failed_configs": len(report["results"]) - len(ok),
        "wall_s": round(report["wall_s"], 1),
        "json": str(Path(out_dir) / "accuracy.json"),
        "png": str(Path(out_dir) / "accuracy.png"),
    }


if __name__ == "__main__":
    typer.run(cli)
