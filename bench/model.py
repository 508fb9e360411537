"""Model cost: parameters, peak RAM, vision s/frame, prefill at 100/25/10 % of 8 frames' tokens, decode tok/s.

Usage: ``vidmem bench model --family llava_onevision --size real`` (``--size tiny`` for a smoke run).
The model is built from a config at the family's real dimensions with random weights (no
download); every dtype runs in its own process so peak RSS is that dtype's alone. Warm-up calls
are excluded; prefill timings are medians over ``repeats`` rounds that each run every ratio once.
Prints a table, then one JSON line.

On a CPU shared with other work, pass ``--threads 1 --repeats 3``: OpenMP threads that lose their
core stall at every op's barrier, and single runs catch the other work's load unevenly (LLaVA-OV
0.5B bf16, 2-core machine next to a training job: 2 threads, one run per ratio: 2.4x at 25 %;
1 thread, 3 rounds: 3.6x bf16, 4.5x fp32).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vlm.base import VideoLLM

log = logging.getLogger(__name__)

ALIASES = {"llava_ov": "llava_onevision", "llava-onevision": "llava_onevision", "llava": "llava_onevision",
           "qwen2-vl": "qwen2_vl", "qwen2.5-vl": "qwen2_5_vl", "qwen2.5_vl": "qwen2_5_vl", "qwen25_vl": "qwen2_5_vl",
           "smolvlm2": "smolvlm"}
RATIOS = (1.0, 0.25, 0.10)
PROMPT_FRAMES = 8
FRAME_HW = (480, 640)


@dataclass(frozen=True)
class BenchConfig:
    family: str = "llava_onevision"
    size: str = "tiny"  # "tiny" or "real"
    variant: str = ""  # real sizes: see vlm.sizes.VARIANTS ("" = the family's first)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    vision_frames: int = 4
    new_tokens: int = 16
    repeats: int = 1
    threads: int = 0  # 0: auto, the cores not busy with other work (see auto_threads)
    device: str = "cpu"


@dataclass
class BenchResult:
    family: str
    size: str
    variant: str
    dtype: str
    device: str
    threads: int
    params_total_m: float = 0.0
    params_vision_m: float = 0.0
    params_lm_m: float = 0.0
    init_s: float = 0.0
    vision_s_per_frame: float = 0.0
    tokens_per_frame: int = 0
    prefill_s: dict[str, float] = field(default_factory=dict)  # "100%" -> seconds
    prefill_tokens: dict[str, int] = field(default_factory=dict)
    decode_tok_s: float = 0.0
    peak_rss_gb: float = 0.0


def canonical_family(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key.replace("-", "_"))


def build(cfg: BenchConfig, dtype: torch.dtype) -> VideoLLM:
    """A VideoLLM at tiny or real dimensions with random weights, without touching disk."""
    from transformers import AutoModelForImageTextToText

    from vlm.loader import adapter_classes
    from vlm.sizes import real_config
    from vlm.tiny import CONFIGS, FAMILY_SPECIALS, tiny_tokenizer

    tok = tiny_tokenizer(cfg.family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in FAMILY_SPECIALS[cfg.family]}
    config = CONFIGS[cfg.family](len(tok), ids) if cfg.size == "tiny" else real_config(cfg.family, ids,
                                                                                        cfg.variant or None)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype).to(cfg.device).eval()
    return adapter_classes()[cfg.family](model, tok, name=f"random-{cfg.family}-{cfg.size}", trained=False)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # CPU-GPU sync point: timing only
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_vision(model: VideoLLM, cfg: BenchConfig) -> tuple[float, int]:
    """(seconds per frame, tokens per frame) for 480x640 frames."""
    frames = (np.random.RandomState(0).rand(cfg.vision_frames, *FRAME_HW, 3) * 255).astype(np.uint8)
    times = [0.5 * i for i in range(cfg.vision_frames)]
    block = model.encode(frames[:2], times[:2])  # warm-up
    seconds = _median_time(lambda: model.encode(frames, times), cfg.repeats)
    per_frame = block.features.shape[0] * block.features.shape[1] / 2
    return seconds / cfg.vision_frames, int(per_frame)


def measure_llm(model: VideoLLM, cfg: BenchConfig, tokens_per_frame: int) -> tuple[dict, dict, float]:
    """Prefill seconds at each ratio of 8 frames' tokens, and decode tokens/s after the full prompt."""
    from compression.tokens import TokenBlock

    dim = model.text_config.hidden_size
    grid = _grid(model, tokens_per_frame)
    frames = PROMPT_FRAMES if model.family not in ("qwen2_vl", "qwen2_5_vl") else PROMPT_FRAMES // 2
    per_frame = grid[0] * grid[1]
    block = TokenBlock(features=torch.randn(frames, per_frame, dim) * 0.02,
                       timestamps=torch.arange(frames, dtype=torch.float64), grid=grid)
    tokens = block.to_tokenset()
    question = "What happens in the video? Answer in one sentence."
    model.generate(model.build_prompt(question, tokens.gather(torch.arange(0, len(tokens), 10))), 2)  # warm-up
    prompts, counts = {}, {}
    for ratio in RATIOS:
        keep = torch.linspace(0, len(tokens) - 1, max(1, round(ratio * len(tokens)))).round().long()
        prompts[f"{ratio:.0%}"] = model.build_prompt(question, tokens.gather(keep))
        counts[f"{ratio:.0%}"] = len(keep)
    # Round-robin over the ratios: on a shared CPU, load from other work drifts into every ratio alike
    # instead of into whichever ratio happened to run while it peaked.
    runs: dict[str, list[float]] = {key: [] for key in prompts}
    for _ in range(cfg.repeats):
        for key, prompt in prompts.items():
            runs[key].append(model.generate(prompt, 1, min_new_tokens=1)[1])
    prefill = {key: statistics.median(ms) / 1e3 for key, ms in runs.items()}
    new, _, decode_ms = model.generate(prompts["100%"], cfg.new_tokens, min_new_tokens=cfg.new_tokens)
    decode = (len(new) - 1) / (decode_ms / 1e3) if decode_ms > 0 else 0.0
    return prefill, counts, decode


def _grid(model: Any, tokens_per_frame: int) -> tuple[int, int]:
    if model.family in ("qwen2_vl", "qwen2_5_vl"):
        side = model.frame_size(*FRAME_HW)
        step = model.patch * model.merge
        return side[0] // step, side[1] // step
    return model.grid


def auto_threads() -> int:
    """Cores minus the 1-minute load average, at least 1: on a shared CPU, OpenMP threads that lose
    their core stall every barrier (measured here: 2 threads on a busy 2-core machine decode ~8x
    slower than 1 thread)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, int(cores - os.getloadavg()[0] + 0.5)))


def run_one(cfg: BenchConfig, dtype_name: str) -> BenchResult:
    """One dtype in the current process."""
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads or auto_threads())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    start = time.perf_counter()
    model = build(cfg, dtype)
    result = BenchResult(cfg.family, cfg.size, cfg.variant, dtype_name, cfg.device, torch.get_num_threads(),
                         init_s=round(time.perf_counter() - start, 2))
    count = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
    inner = model.model.model
    vision = getattr(inner, "visual", None) or getattr(inner, "vision_tower", None) or inner.vision_model
    result.params_total_m = round(count(model.model), 1)
    result.params_vision_m = round(count(vision), 1)
    result.params_lm_m = round(count(model.language_model), 1)
    with torch.no_grad():
        per_frame_s, result.tokens_per_frame = measure_vision(model, cfg)
        result.vision_s_per_frame = round(per_frame_s, 3)
        prefill, counts, decode = measure_llm(model, cfg, result.tokens_per_frame)
    result.prefill_s = {k: round(v, 3) for k, v in prefill.items()}
    result.prefill_tokens = counts
    result.decode_tok_s = round(decode, 2)
    result.peak_rss_gb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    return result


def _child(args: tuple[BenchConfig, str]) -> dict[str, Any]:
    return asdict(run_one(*args))


def run(cfg: BenchConfig) -> list[dict[str, Any]]:
    """Every dtype of ``cfg`` in a fresh process (clean peak RSS); returns one dict per dtype."""
    cfg = BenchConfig(**{**asdict(cfg), "family": canonical_family(cfg.family)})
    results = []
    ctx = multiprocessing.get_context("spawn")
    for dtype_name in cfg.dtypes:
        with ctx.Pool(1) as pool:
            results.append(pool.apply(_child, ((cfg, dtype_name),)))
    return results


def table(results: list[dict[str, Any]]) -> str:
    head = ["dtype", "params M (vis/LM)", "peak GB", "vision s/frame", "tok/frame"]
    head += [f"prefill {k} ({results[0]['prefill_tokens'][k]} vis) s" for k in results[0]["prefill_s"]]
    head += ["25%/100% speed-up", "decode tok/s"]
    rows = [head]
    for r in results:
        p = r["prefill_s"]
        rows.append([r["dtype"], f"{r['params_total_m']} ({r['params_vision_m']}/{r['params_lm_m']})",
                     str(r["peak_rss_gb"]), str(r["vision_s_per_frame"]), str(r["tokens_per_frame"]),
                     *[str(v) for v in p.values()], f"{p['100%'] / max(p['25%'], 1e-9):.1f}x", str(r["decode_tok_s"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def cli(family: str = "llava_onevision", size: str = "tiny", variant: str = "", dtypes: str = "fp32,bf16",
        vision_frames: int = 4, new_tokens: int = 16, repeats: int = 1, threads: int = 0,
        device: str = "cpu") -> None:
    """Model cost at tiny or real dimensions (random weights): params, RAM, vision, prefill, decode."""
    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', got {size!r}")
    cfg = BenchConfig(family=family, size=size, variant=variant, dtypes=tuple(dtypes.split(",")),
                      vision_frames=vision_frames, new_tokens=new_tokens, repeats=repeats, threads=threads,
                      device=device)
    results = run(cfg)
    print(f"{canonical_family(family)} {size} {variant} on {device}, {results[0]['threads']} threads")
    print(table(results))
    print(json.dumps({"bench": "model", "config": asdict(cfg), "results": results}))


if __name__ == "__main__":
    import typer

    typer.run(cli)
