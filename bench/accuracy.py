"""Accuracy of every registered compression method at fixed retentions (``vidmem bench accuracy``).

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

    vidmem bench accuracy --clips 32
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

from bench.evalkit import Scored, accuracy, concat_blocks, encode_chunks, load, median, per_type, score
from bench.tiny_data import Clip, heldout_clips
from compression.registry import SelectContext, build_method, list_methods, method_info
from compression.tokens import TokenBlock, TokenSet

log = logging.getLogger(__name__)

RETENTIONS = (0.5, 0.25, 0.15, 0.10, 0.05)
SKIP = {"none"}  # the uncompressed row


@dataclass
class AccuracyConfig:
    model: str = "vidmem-tiny"
    clips: int = 32
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


def run_stage1(spec: str, blocks: list[TokenBlock]) -> tuple[TokenSet, float]:
    method = build_method(spec, stage=1)
    state = method.init_state()
    outs = []
    start = time.perf_counter()
    for block in blocks:
        state, out = method.update(state, block)
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
    clips = heldout_clips(cfg.clips, cfg.frame_size, first_seed=cfg.first_seed)
    out = []
    for clip in clips:
        blocks = encode_chunks(model, clip.frames, clip.times, cfg.chunk_frames)
        out.append(Prepared(clip, blocks, concat_blocks(blocks)))
    return out


def eval_stage1(model, row: Row, prepared: list[Prepared]) -> None:  # type: ignore[no-untyped-def]
    for p in prepared:
        kept, ms = run_stage1(row.spec, p.blocks)
        row.compress_ms.append(ms)
        row.scored += [score(model, q, kept) for q in p.clip.questions]


def eval_stage2(model, row: Row, prepared: list[Prepared]) -> None:  # type: ignore[no-untyped-def]
    method = build_method(row.spec, stage=2)
    for p in prepared:
        budget = max(1, round(row.retention * len(p.tokens)))
        for i, q in enumerate(p.clip.questions):
            start = time.perf_counter()
            kept = method.select(p.tokens, budget, SelectContext(q.text, model, seed=i))
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


def summarise(row: Row, base_acc: float) -> dict:
    acc = accuracy(row.scored)
    return {
        "method": row.method,
        "stage": row.stage,
        "retention": row.retention,
        "spec": row.spec,
        "accuracy": acc,
        "pct_of_uncompressed": 100 * acc / base_acc if base_acc else float("nan"),
        "tokens_kept": float(torch.tensor([s.visual_tokens for s in row.scored], dtype=torch.float).mean())
        if row.scored
        else float("nan"),
        "compress_ms": median(row.compress_ms),
        "prefill_ms": median([s.prefill_ms for s in row.scored]),
        "per_type": per_type(row.scored),
        "questions": len(row.scored),
        "error": row.error,
    }


def print_tables(base: dict, results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"accuracy vs retention (uncompressed {base['accuracy'] * 100:.1f}%, "
        f"{base['tokens_kept']:.0f} tokens, prefill {base['prefill_ms']:.1f} ms)"
    )
    for col in (
        "method",
        "stage",
        "retention",
        "accuracy",
        "% of uncompr.",
        "tokens kept",
        "compress ms",
        "prefill ms",
    ):
        table.add_column(col, justify="right" if col not in ("method",) else "left")
    for r in results:
        if r["error"]:
            table.add_row(
                r["method"], str(r["stage"]), f"{r['retention']:.0%}", f"[red]{r['error'][:60]}", "", "", "", ""
            )
            continue
        table.add_row(
            r["method"],
            str(r["stage"]),
            f"{r['retention']:.0%}",
            f"{r['accuracy'] * 100:.1f}",
            f"{r['pct_of_uncompressed']:.1f}",
            f"{r['tokens_kept']:.1f}",
            f"{r['compress_ms']:.2f}",
            f"{r['prefill_ms']:.1f}",
        )
    types = sorted(base["per_type"])
    by_type = Table(title="accuracy per question type (%)")
    for col in ("method", "stage", "retention", *types):
        by_type.add_column(col)
    by_type.add_row("uncompressed", "-", "100%", *(f"{base['per_type'][t] * 100:.0f}" for t in types))
    for r in results:
        if not r["error"]:
            by_type.add_row(
                r["method"],
                str(r["stage"]),
                f"{r['retention']:.0%}",
                *(f"{r['per_type'].get(t, float('nan')) * 100:.0f}" for t in types),
            )
    console = Console(width=160)
    console.print(table)
    console.print(by_type)


def plot(base: dict, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({(r["method"], r["stage"]) for r in results if not r["error"]}):
        pts = sorted((r["retention"], r["accuracy"]) for r in results if (r["method"], r["stage"]) == key)
        ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o", label=f"{key[0]} (s{key[1]})")
    ax.axhline(base["accuracy"] * 100, color="k", linestyle="--", label="uncompressed")
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
    """Run every (method, retention), print the tables, write JSON and PNG; returns the results."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model = load(cfg.model, cfg.dtype)
    prepared = prepare(model, cfg)
    base_row = Row("uncompressed", 0, 1.0, "none")
    for p in prepared:
        base_row.scored += [score(model, q, p.tokens) for q in p.clip.questions]
    base = summarise(base_row, accuracy(base_row.scored))
    rows = plan_rows(cfg, prepared[:4])
    for row in rows:
        evaluate_row(model, row, prepared)
        log.info("%s s%d %.0f%%: %.3f", row.method, row.stage, row.retention * 100, accuracy(row.scored))
    results = [summarise(r, base["accuracy"]) for r in rows]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": dataclasses.asdict(cfg),
        "uncompressed": base,
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=1))
    plot(base, results, out / "accuracy.png")
    print_tables(base, results)
    return report


def cli(
    model: Annotated[str, typer.Option(help="'vidmem-tiny' (shipped) or a model folder")] = "vidmem-tiny",
    clips: Annotated[int, typer.Option(help="held-out clips (about 6 questions each)")] = 32,
    methods: Annotated[str, typer.Option(help="comma-separated method names; empty: all registered")] = "",
    out_dir: Annotated[str, typer.Option(help="JSON and PNG go here")] = "bench-results/accuracy",
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
) -> None:
    """Accuracy of every compression method at 50/25/15/10/5% retention on held-out clips."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    cfg = AccuracyConfig(
        model=model, clips=clips, methods=tuple(filter(None, methods.split(","))), out_dir=out_dir, threads=threads
    )
    report = run(cfg)
    ok = [r for r in report["results"] if not r["error"]]
    print(
        json.dumps(
            {
                "uncompressed_accuracy": report["uncompressed"]["accuracy"],
                "questions": report["uncompressed"]["questions"],
                "configs": len(ok),
                "failed_configs": len(report["results"]) - len(ok),
                "wall_s": round(report["wall_s"], 1),
                "json": str(Path(out_dir) / "accuracy.json"),
                "png": str(Path(out_dir) / "accuracy.png"),
            }
        )
    )


if __name__ == "__main__":
    typer.run(cli)
