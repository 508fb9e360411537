"""Compression speed: milliseconds per chunk for every method, growth with memory size, share of encode time.

Run: ``vidmem bench compression`` (or ``python -m bench.compression``). Options: ``--dims 896,3584``,
``--repeats 5``, ``--memory-sizes 1000,8000,64000``, ``--device cpu|cuda``, ``--out PATH``.

A chunk is 8 frames x 196 tokens (LLaVA-OneVision after 2x2 pooling) at width D. Stage-1 methods
compress the chunk (with the state a previous chunk left); stage-2 methods select 25% of it. The
model hooks (attention probe, text relevance) and the CaCoVID policy are synthetic stand-ins here, so
the figures are the methods' own cost without the LLM forward they would trigger. Growth: a memory of
n tokens absorbs one more stage-1 output (392 tokens) and every stage-2 method selects
min(``growth_budget``, n/4) tokens out of n (divprune only up to ``divprune_max_tokens``: its
greedy is O(budget*n*D)). The reference is the vision encoder time for the same chunk at
LLaVA-OneVision-0.5B dimensions measured on this CPU (research/vlm-feasibility.md section 5:
SigLIP-so400m/384, 1.66-1.71 s/frame bf16, 4.06-4.41 s/frame fp32); the target is < 2% of it.
Warm-up runs are discarded; figures are medians. Prints a table, writes JSON, ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import typer

from compression.memory import Memory
from compression.registry import SelectContext, build_method, list_methods
from compression.tokens import TokenBlock, TokenSet

ENCODE_S_PER_FRAME = {"bf16": 1.7, "fp32": 4.1}  # LLaVA-OV-0.5B vision tower + projector, this CPU
FRAMES, GRID = 8, (14, 14)
VTM_TARGETS = ("naive", "center", "boundary", "motion", "learnable")


@dataclass
class BenchConfig:
    dims: tuple[int, ...] = (896, 3584)
    repeats: int = 5
    warmup: int = 1
    memory_sizes: tuple[int, ...] = (1000, 8000, 64000)
    growth_dim: int = 896
    growth_budget: int = 1024
    divprune_max_tokens: int = 8000  # divprune's greedy is O(budget * n * D): 64k tokens take minutes
    stage2_ratio: float = 0.25
    threads: int = 1
    device: str = "cpu"
    out: str = "bench-results/compression.json"


@dataclass
class Row:
    section: str  # "chunk" or "growth"
    method: str
    stage: int
    dim: int
    tokens_in: int
    tokens_out: int
    ms: float | None  # None: skipped
    encode_share_bf16_pct: float | None = None
    encode_share_fp32_pct: float | None = None
    extra: dict = field(default_factory=dict)


class SyntheticHooks:
    """Stand-in for the Video LLM hooks: fixed pseudo-random scores (their cost is not the method's)."""

    def probe_attention(self, question: str, tokens: TokenSet, layer: int) -> torch.Tensor:
        return torch.rand(len(tokens), generator=torch.Generator().manual_seed(layer), device="cpu")

    def text_relevance(self, question: str, tokens: TokenSet) -> torch.Tensor:
        return torch.rand(len(tokens), generator=torch.Generator().manual_seed(99), device="cpu")

    def question_states(self, question: str, tokens: TokenSet, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(98)
        return torch.rand(4, 8, generator=gen), torch.rand(len(tokens), 8, generator=gen)


class SyntheticScorer:
    """Stand-in for a trained CaCoVID policy (its network cost is measured by the learned-methods bench)."""

    def score(self, question: str, tokens: TokenSet, hooks: object) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(7)
        return torch.rand(len(tokens), generator=gen), torch.rand(len(tokens.frames()), generator=gen)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> float:
    """Median wall time of ``fn`` in ms after ``warmup`` discarded calls (synchronised on CUDA)."""
    times = []
    for i in range(warmup + repeats):
        if device == "cuda":
            torch.cuda.synchronize()  # CPU-GPU sync point
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def video_block(dim: int, frame_offset: int, device: str, seed: int = 0) -> TokenBlock:
    """A chunk [8, 196, dim]: a static background with small noise and a moving region (a quarter of
    the positions, shifting every frame) whose tokens change, so temporal methods see realistic redundancy."""
    gen = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    scene = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(seed + 1))  # shared by all tokens
    feats = scene + torch.randn(1, n, dim, generator=gen) + 0.1 * torch.randn(FRAMES, n, dim, generator=gen)
    moving = (torch.arange(n)[None, :] - 7 * (torch.arange(FRAMES)[:, None] + frame_offset)) % n < n // 4
    fresh = scene + torch.randn(FRAMES, n, dim, generator=gen)
    feats = torch.where(moving[..., None], fresh, feats).to(device)
    times = torch.arange(frame_offset, frame_offset + FRAMES, dtype=torch.float64) * 0.5
    motion = torch.rand(FRAMES, GRID[0] * GRID[1], generator=gen)
    return TokenBlock(feats, times, GRID, frame_offset, {"motion": motion.to(device)})


def stage1_specs() -> list[str]:
    specs = []
    for name in list_methods(1):
        specs += [f"vtm:target={t}" for t in VTM_TARGETS] if name == "vtm" else [name]
    return specs + ["adatp-local:dedup_tau=0.9", "tome:matmul=bf16", "vtm:matmul=bf16"]


def build(spec: str, dim: int, stage: int):  # type: ignore[no-untyped-def]
    objects: dict = {}
    if spec == "vtm:target=learnable":
        objects["saliency"] = torch.randn(dim, generator=torch.Generator().manual_seed(3))
    if spec.startswith("cacovid"):
        objects["scorer"] = SyntheticScorer()
    return build_method(spec, stage=stage, **objects)


def encode_share(ms: float, frames: int = FRAMES) -> tuple[float, float]:
    """ms as a percentage of the chunk's vision-encoder time (bf16, fp32)."""
    return tuple(100.0 * ms / (frames * s * 1e3) for s in (ENCODE_S_PER_FRAME["bf16"], ENCODE_S_PER_FRAME["fp32"]))


def chunk_rows(cfg: BenchConfig, dim: int) -> list[Row]:
    """Every method on one chunk of 8 x 196 tokens at width ``dim``."""
    rows = []
    previous, block = video_block(dim, 0, cfg.device, seed=1), video_block(dim, FRAMES, cfg.device, seed=1)
    for spec in stage1_specs():
        method = build(spec, dim, 1)
        state, _ = method.update(method.init_state(), previous)  # the state a previous chunk left
        out = method.update(state, block)[1]
        ms = median_ms(lambda m=method, s=state: m.update(s, block), cfg.repeats, cfg.warmup, cfg.device)
        rows.append(Row("chunk", spec, 1, dim, FRAMES * 196, len(out), ms, *encode_share(ms)))
    tokens = block.to_tokenset()
    budget = round(cfg.stage2_ratio * len(tokens))
    context = SelectContext("what happened?", SyntheticHooks())
    for spec in list_methods(2):
        method = build(spec, dim, 2)
        out = method.select(tokens, budget, context)
        ms = median_ms(lambda m=method: m.select(tokens, budget, context), cfg.repeats, cfg.warmup, cfg.device)
        rows.append(Row("chunk", spec, 2, dim, len(tokens), len(out), ms, *encode_share(ms)))
    return rows


def filled_memory(n: int, dim: int, device: str) -> Memory:
    """A memory holding n tokens over the 196 positions, in time order, at budget n."""
    gen = torch.Generator().manual_seed(n)
    k = torch.arange(n)
    tokens = TokenSet(torch.randn(n, dim, generator=gen).to(device), (k // 196).to(torch.float64) * 0.5,
                      k // 196, (k % 196) // 14, k % 14, torch.ones(n), {}, GRID)
    return Memory(n, tokens, chunks_applied=n // 1568, tokens_seen=n)


def growth_rows(cfg: BenchConfig) -> list[Row]:
    """Memory append (consolidation) and stage-2 selection as the memory grows."""
    rows, dim = [], cfg.growth_dim
    first, chunk_out = (video_block(dim, offset, cfg.device, seed=offset).to_tokenset().gather(
        torch.arange(0, FRAMES * 196, 4)) for offset in (10**6, 10**6 + FRAMES))
    context = SelectContext("what happened?", SyntheticHooks())
    for n in cfg.memory_sizes:
        memory = filled_memory(n, dim, cfg.device).append(first)  # a stream's memory: caches warm
        repeats = cfg.repeats if n <= 8000 else max(1, cfg.repeats // 2)
        ms = median_ms(lambda m=memory: m.append(chunk_out), repeats, cfg.warmup, cfg.device)
        rows.append(Row("growth", "memory.append", 0, dim, n + len(chunk_out), n, ms, *encode_share(ms)))
        budget = min(cfg.growth_budget, n // 4)
        for spec in list_methods(2):
            if spec == "divprune" and n > cfg.divprune_max_tokens:
                rows.append(Row("growth", spec, 2, dim, n, budget, None, extra={"skipped": "O(budget*n*D)"}))
                continue
            method = build(spec, dim, 2)
            ms = median_ms(lambda m=method, t=memory.tokens, b=budget: m.select(t, b, context), repeats,
                           cfg.warmup, cfg.device)
            rows.append(Row("growth", spec, 2, dim, n, budget, ms, *encode_share(ms)))
    return rows


def run(cfg: BenchConfig | None = None) -> dict:
    """Measure everything; returns {"config", "environment", "rows"} and writes it as JSON to cfg.out."""
    cfg = cfg or BenchConfig()
    torch.set_num_threads(cfg.threads)
    rows = [r for dim in cfg.dims for r in chunk_rows(cfg, dim)] + growth_rows(cfg)
    result = {"bench": "compression", "config": asdict(cfg), "environment": environment(cfg), "rows": [
        asdict(r) for r in rows]}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1))
    return result


def environment(cfg: BenchConfig) -> dict:
    env = {"torch": torch.__version__, "threads": cfg.threads, "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
           "encode_s_per_frame": ENCODE_S_PER_FRAME, "encode_source": "research/vlm-feasibility.md section 5"}
    if cfg.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def format_table(result: dict) -> str:
    """Markdown tables: per-chunk ms per method and dim, then growth with memory size."""
    rows = result["rows"]
    dims = sorted({r["dim"] for r in rows if r["section"] == "chunk"})
    head = "| stage | method | " + " | ".join(f"ms D={d} | % enc bf16 D={d}" for d in dims) + " | tokens out |"
    lines = [head, "|" + "---|" * (3 + 2 * len(dims))]
    chunk = [r for r in rows if r["section"] == "chunk"]
    for stage, method in dict.fromkeys((r["stage"], r["method"]) for r in chunk):
        cells = [next(r for r in chunk if (r["stage"], r["method"], r["dim"]) == (stage, method, d)) for d in dims]
        lines.append(f"| {stage} | {method} | " + " | ".join(
            f"{c['ms']:.2f} | {c['encode_share_bf16_pct']:.3f}" for c in cells) + f" | {cells[0]['tokens_out']} |")
    growth = [r for r in rows if r["section"] == "growth"]
    sizes = sorted({r["tokens_out"] if r["method"] == "memory.append" else r["tokens_in"] for r in growth})
    lines += ["", f"| growth (D={result['config']['growth_dim']}) | " + " | ".join(
        f"{n} tokens ms" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for method in dict.fromkeys(r["method"] for r in growth):
        cells = [r for r in growth if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join("skipped" if c["ms"] is None else f"{c['ms']:.2f}"
                                                   for c in cells) + " |")
    return "\n".join(lines)


def summary(result: dict) -> dict:
    """One line for scripts: the worst per-chunk share of encode time and memory growth."""
    chunk = [r for r in result["rows"] if r["section"] == "chunk"]
    worst = max(chunk, key=lambda r: r["ms"])
    growth = {f"append_ms_{r['tokens_out']}": round(r["ms"], 3) for r in result["rows"]
              if r["method"] == "memory.append"}
    return {"bench": "compression", "max_compress_ms": round(worst["ms"], 3), "max_method": worst["method"],
            "max_dim": worst["dim"], "max_encode_share_bf16_pct": round(worst["encode_share_bf16_pct"], 4),
            **growth, "json": result["config"]["out"]}


def cli(
    dims: str = typer.Option("896,3584", help="feature widths D, comma-separated"),
    repeats: int = typer.Option(5, help="timed runs per case (median reported)"),
    warmup: int = typer.Option(1, help="discarded runs before timing"),
    memory_sizes: str = typer.Option("1000,8000,64000", help="memory sizes in tokens for the growth table"),
    growth_budget: int = typer.Option(1024, help="stage-2 budget in the growth table"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    out: str = typer.Option("bench-results/compression.json", help="where the JSON results go"),
) -> None:
    """Compression speed per method and chunk, growth with memory size, share of the vision encoder time."""
    cfg = BenchConfig(tuple(int(d) for d in dims.split(",")), repeats, warmup,
                      tuple(int(n) for n in memory_sizes.split(",")), growth_budget=growth_budget,
                      threads=threads, device=device, out=out)
    result = run(cfg)
    print(format_table(result))
    print(json.dumps(summary(result)))


if __name__ == "__main__":
    typer.run(cli)
