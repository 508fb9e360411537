"""Train vidmem-tiny v2 from scratch on generated clips and honest questions (``vidmem train tiny``).

Each step renders a batch of clips, encodes them through the model's own vision tower (with
gradients) via the vlm adapter (``video_features`` -> TokenBlock -> TokenSet), builds every
question's prompt with ``build_prompt`` -- the exact prompt ``answer``/``option_loglikelihoods``
use -- and teacher-forces the answer in words (plus the end-of-turn token). Beside that
full-vocabulary loss, a cross-entropy over the question's options (a softmax over their
log-likelihoods, one token each) teaches what the benchmark scores. Per clip the prompt prefix up
to the question (text + timestamps + visual tokens) is identical for all its prompts, so it runs
once and its KV cache is shared: exact, only cheaper.

Recipe: (1) vision pretraining: tower + projector learn per-token colour, shape and grid-cell
read-outs on single frames; (2) questions and captions on short clips (curriculum 1-4 frames first),
long-span clips and memories spanning minutes (time-ordered frames with random token dropout).
The learning rate follows the step count only (warmup, cosine over ``steps``); a run stops after
``max_minutes`` and the next one resumes from the small checkpoint in ``work_dir``.

    nohup nice -n 19 python -m bench.train_tiny > train-v2.log 2>&1 &
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer

from bench.tiny_data import (
    VISION_SEED_BASE,
    Clip,
    batch_plans,
    cell_targets,
    heldout_clips,
    rendered,
    vision_batch,
)
from bench.tiny_model import V2, Arch, build_model, build_tokenizer, save_preprocessor
from compression.tokens import TokenBlock, TokenSet
from vlm.base import IGNORE_INDEX
from vlm.llava_onevision import LlavaOneVision
from vlm.loader import resolve_device

log = logging.getLogger(__name__)

VISION_LR = 3e-3  # peak learning rate of the vision pretraining (cosine to 0 over its steps)
# mean visual-token norm / mean text-embedding norm after the vision pretraining: about the scale a fresh
# projector with v1's init gain gives (~9 against ~0.3); the LLM learned to read from there
VISUAL_TO_TEXT_NORM = 30.0
PROBE_SEED = 60_000  # held-out frames for the cell probe (below HELDOUT_SEED_LIMIT, apart from the QA sets)


@dataclass
class TinyConfig:
    out: str = "models/vidmem-tiny-v2"
    work_dir: str = "models/vidmem-tiny-v2.ckpt"  # the resumable checkpoint (small enough to commit)
    steps: int = 4000  # the schedule's length: warmup, then cosine to 5 % at this step
    max_minutes: float = 140.0  # this run stops (and checkpoints) after so much training time; the next resumes
    clips_per_batch: int = 6
    sizes: tuple[int, ...] = (96, 112, 128)
    long_share: float = 0.1
    memory_share: float = 0.15  # memories spanning minutes (``tiny_data.memory_clip``, random token dropout)
    max_frames: int = 16  # short clips have 4..max_frames frames
    captions: bool = True  # also teacher-force free-text clip descriptions (dense grounding signal)
    caption_weight: float = 0.5  # caption token loss relative to the answer loss
    option_weight: float = 1.0  # cross-entropy over the options' log-likelihoods, beside the full-vocabulary one
    # the per-token read-outs during question training. From scratch at 0.5 the LLM stayed at chance on 1-frame
    # "what is in view" for 400 steps (without them: 36-47 % by step 200); at 0 the tokens forgot their cell (the
    # cell probe fell from 100 % after the vision pretraining to 5 % at step 1716, chance 3 %): fine-tunes keep it
    grounding_weight: float = 0.0
    vision_lr_scale: float = 1.0  # the vision tower's learning rate relative to the LLM's and projector's
    vision_steps: int = 500  # pretraining of vision tower + projector on the read-outs alone
    vision_batch: int = 48  # frames per vision pretraining step
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.01
    curriculum_steps: int = 300  # the first steps use short clips (1 to 4 frames, no long ones), then ramp up
    short_share: float = 0.0  # after those steps, this share of the short-clip batches still has 1 to 4 frames
    heldout_clips: int = 48
    eval_every: int = 250  # honest held-out accuracy (and the blind floor) on 16 clips every so many steps
    checkpoint_every: int = 25
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    # a fine-tune: start from another run's checkpoint (its weights, vision pretraining done, its training time
    # counted on) with a fresh optimiser and this config's own schedule; None trains from scratch
    init_from: str | None = None
    # with init_from: False takes only the language model from it and pretrains the vision tower and projector
    # afresh (with ``vision_lr_scale`` 0 the tower then stays frozen, as LLaVA's second stage keeps its encoder)
    init_vision: bool = True
    arch: Arch = field(default_factory=lambda: V2)


def adapter_for(model, tokenizer) -> LlavaOneVision:  # type: ignore[no-untyped-def]
    adapter = LlavaOneVision(model, tokenizer, name="vidmem-tiny", trained=False)
    model.train()
    return adapter


class GroundingHeads(torch.nn.Module):
    """Training-only linear read-outs from every visual token (not shipped): the colour and shape of the
    object whose centre lies in the token's cell (or none), and the token's own grid cell.

    The answers are too sparse a signal to teach a vision tower from scratch what an object looks like;
    these heads give every visual token a target. The cell target makes each token carry where it sits:
    compression drops tokens and closes the position gaps, so a token must say its cell itself (the v1
    tokens did not: a cell-index probe scored 18 %, chance 11 %)."""

    def __init__(self, dim: int, cells: int, classes: int = 5) -> None:
        super().__init__()
        self.colour = torch.nn.Linear(dim, classes)
        self.shape = torch.nn.Linear(dim, classes)
        self.cell = torch.nn.Linear(dim, cells)

    def loss(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """feats [F, N, D], targets int64 [F, N, 4] (``cell_targets``) -> summed cross-entropies."""
        frames, cells = feats.shape[:2]
        flat, tgt = unit_rms(feats.reshape(-1, feats.shape[-1]).float()), targets.reshape(-1, 4).to(feats.device)
        cell = torch.arange(cells, device=feats.device).repeat(frames)
        return (F.cross_entropy(self.colour(flat), tgt[:, 0]) + F.cross_entropy(self.shape(flat), tgt[:, 1])
                + F.cross_entropy(self.cell(flat), cell))


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """x scaled to unit root-mean-square per row: the read-outs see directions only, so they put no pressure on
    the scale of the visual tokens (unnormalised, the vision pretraining grew them to norm ~90 against ~0.3 for
    text embeddings; ``calibrate_projector`` sets it once after the pretraining)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


@torch.no_grad()
def calibrate_projector(adapter: LlavaOneVision, frames: np.ndarray, ratio: float = VISUAL_TO_TEXT_NORM) -> float:
    """Scale the projector's output layer so the visual tokens' mean norm is ``ratio`` x the text embeddings'
    (the scale v1's init gain gave: the LLM reads tokens of about its own scale); returns the factor."""
    feats = adapter.video_features(adapter.pixel_values(frames))
    text = adapter.model.get_input_embeddings().weight.norm(dim=-1).mean()
    factor = float(ratio * text / feats.norm(dim=-1).mean())
    layer = adapter.model.model.multi_modal_projector.linear_2
    layer.weight.mul_(factor)
    layer.bias.mul_(factor)
    return factor


def _encode(adapter: LlavaOneVision, clips: list[Clip]) -> tuple[torch.Tensor, list[TokenSet]]:
    pixels = torch.cat([adapter.pixel_values(c.frames) for c in clips])  # [sum F, 3, S, S]
    feats = adapter.video_features(pixels)  # [sum F, N, D]
    out, start = [], 0
    for clip in clips:
        f = len(clip.times)
        block = TokenBlock(feats[start : start + f], torch.tensor(clip.times, dtype=torch.float64), adapter.grid)
        out.append(block.to_tokenset())
        start += f
    return feats, out


def encode_batch(adapter: LlavaOneVision, clips: list[Clip]) -> list[TokenSet]:
    """Differentiable TokenSets, one per clip (one vision-tower call for all frames of the batch)."""
    return _encode(adapter, clips)[1]


def drop_tokens(tokens: TokenSet, rate: float, seed: int) -> TokenSet:
    """A random ``1 - rate`` share of the tokens (at least one), in their order: memory training only."""
    if rate <= 0 or len(tokens) < 2:
        return tokens
    gen = torch.Generator().manual_seed(seed)
    keep = max(1, round(len(tokens) * (1 - rate)))
    idx = torch.sort(torch.randperm(len(tokens), generator=gen)[:keep]).values
    return tokens.gather(idx.to(tokens.features.device))


def _common_prefix(rows: list[torch.Tensor]) -> int:
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        diff = (r[:n] != rows[0][:n]).nonzero()
        n = int(diff[0, 0]) if len(diff) else n
    return n


def option_ids(adapter: LlavaOneVision, options: tuple[str, ...]) -> list[int]:
    """The one token of each option (v2's tokenizer makes every answer one token)."""
    ids = [adapter.text_ids(o, specials=False) for o in options]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"options {options} are not one token each: {ids}")
    return [i[0] for i in ids]


@dataclass
class ClipLoss:
    answer: torch.Tensor  # summed full-vocabulary CE of the answers' tokens
    answer_tokens: int
    option: torch.Tensor  # summed CE over the option sets
    caption: torch.Tensor
    caption_tokens: int
    correct: int  # questions whose right option has the highest likelihood
    questions: int


def clip_loss(adapter: LlavaOneVision, clip: Clip, tokens: TokenSet, with_captions: bool) -> ClipLoss:
    """Teacher-forced losses of one clip's questions (answers in words) and captions, prefix run once."""
    device = adapter.device
    prompts = [adapter.build_prompt(q.prompt, tokens, True, answer_text=q.answer_text) for q in clip.questions]
    if with_captions:
        prompts += [adapter.build_prompt(text, tokens, True, answer_text=ans) for text, ans in clip.captions]
    # the shared part ends before the first answer token's predecessor, so every answer token is predicted in the suffix
    answer_starts = [int((p.labels != IGNORE_INDEX).nonzero()[0, 0]) for p in prompts]
    plen = min(_common_prefix([p.input_ids for p in prompts]), min(answer_starts) - 1)
    lm = adapter.language_model
    out = lm(inputs_embeds=adapter.embed(prompts[0])[:, :plen], use_cache=True)
    cache = out.past_key_values
    cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    rows = [adapter.embed(p)[0, plen:] for p in prompts]
    suffix = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # [B, S, D]
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
    labels = torch.nn.utils.rnn.pad_sequence([p.labels[plen:] for p in prompts], batch_first=True,
                                             padding_value=IGNORE_INDEX).to(device)
    positions = plen + torch.arange(suffix.shape[1], device=device)[None].expand(len(prompts), -1)
    attn = torch.cat([torch.ones(len(prompts), plen, dtype=torch.long), mask], dim=1).to(device)
    hidden = lm(inputs_embeds=suffix, attention_mask=attn, position_ids=positions, past_key_values=cache,
                use_cache=True).last_hidden_state  # [B, S, D]
    target = labels[:, 1:]  # the first suffix position predicts the second suffix token, and so on
    sel = target != IGNORE_INDEX
    logits = adapter.model.lm_head(hidden[:, :-1]).float()  # [B, S-1, V]
    token_loss = torch.zeros_like(target, dtype=torch.float32)
    token_loss[sel] = F.cross_entropy(logits[sel], target[sel], reduction="none")
    nq = len(clip.questions)
    first = sel.float().argmax(1)[:nq]  # position of each answer's first token
    opt_loss, correct = logits.new_zeros(()), 0
    for i, q in enumerate(clip.questions):
        ids = torch.tensor(option_ids(adapter, q.choices), device=device)
        restricted = logits[i, first[i], ids]  # [C]: each option's log-likelihood up to a shared constant
        gold = q.choices.index(q.answer_text)
        opt_loss = opt_loss + F.cross_entropy(restricted[None], torch.tensor([gold], device=device))
        correct += int(restricted.argmax()) == gold
    return ClipLoss(token_loss[:nq].sum(), int(sel[:nq].sum()), opt_loss, token_loss[nq:].sum(),
                    int(sel[nq:].sum()), correct, nq)


def forward_batch(adapter: LlavaOneVision, clips: list[Clip], cfg: TinyConfig,
                  heads: GroundingHeads | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = mean answer-token CE + option_weight x mean option CE + caption_weight x mean caption-token CE
    (+ grounding_weight x the read-outs); each kind is averaged on its own so the many caption tokens do not
    drown the one-token answers. Returns (loss, {"acc": option accuracy of the batch, ...})."""
    feats, token_sets = _encode(adapter, clips)
    parts = []
    for clip, tokens in zip(clips, token_sets, strict=True):
        if clip.dropout and adapter.model.training:
            tokens = drop_tokens(tokens, clip.dropout, clip.seed)
        parts.append(clip_loss(adapter, clip, tokens, cfg.captions))
    n_answer = max(1, sum(p.answer_tokens for p in parts))
    n_q = max(1, sum(p.questions for p in parts))
    loss = sum(p.answer for p in parts) / n_answer + cfg.option_weight * sum(p.option for p in parts) / n_q
    n_caption = sum(p.caption_tokens for p in parts)
    if n_caption:
        loss = loss + cfg.caption_weight * sum(p.caption for p in parts) / n_caption
    if heads is not None and cfg.grounding_weight:
        targets = torch.cat([torch.from_numpy(cell_targets(c.tracks, c.times, adapter.grid)) for c in clips])
        loss = loss + cfg.grounding_weight * heads.loss(feats, targets)
    return loss, {"acc": sum(p.correct for p in parts) / n_q, "questions": float(n_q),
                  "visual_norm": float(feats.detach().norm(dim=-1).mean())}


def lr_at(cfg: TinyConfig, step: int) -> float:
    """Warmup, then cosine from ``lr`` to 5 % of it at ``steps``: a function of the step alone, so chained
    runs continue one schedule whatever each run's wall clock."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class State:
    step: int = 0
    elapsed: float = 0.0  # training seconds over all runs
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # periodic honest held-out accuracy and blind floor
    resumed_from: int | None = None
    vision_done: bool = False
    probe: dict = field(default_factory=dict)  # linear probes on the frozen visual tokens
    init: dict = field(default_factory=dict)  # the checkpoint a fine-tune started from: path, step, elapsed


def _checkpoint_path(cfg: TinyConfig) -> Path:
    return Path(cfg.work_dir) / "checkpoint.pt"


def _half_optimizer(opt: torch.optim.Optimizer) -> dict:
    """The optimiser state with its moments in bfloat16: halves the checkpoint (<= 20 MB to commit)."""
    state = opt.state_dict()  # its per-parameter dicts are the live ones: build new dicts, never modify them
    halved = {index: {key: value.to(torch.bfloat16) if key in ("exp_avg", "exp_avg_sq") else value
                      for key, value in slot.items()} for index, slot in state["state"].items()}
    return {**state, "state": halved}


def save_checkpoint(cfg: TinyConfig, model, opt, state: State, heads=None) -> None:  # type: ignore[no-untyped-def]
    """Weights, training-only heads, optimiser (bf16 moments), step and history; atomically replaced."""
    path = _checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "heads": heads.state_dict() if heads is not None else None,
                "opt": _half_optimizer(opt), "state": asdict(state), "config": json.dumps(asdict(cfg))}, tmp)
    tmp.replace(path)
    write_curve(Path(cfg.work_dir), state)


# how long a run goes, where it writes and what it runs on may change on resume
MAY_CHANGE_ON_RESUME = ("out", "work_dir", "max_minutes", "eval_every", "checkpoint_every", "heldout_clips",
                        "threads", "device", "init_from")  # init_from: read at a fine-tune's first step only


def _identity(config: dict) -> dict:
    """The config fields a checkpoint must agree on (run length, output paths and device may change on resume);
    a field added since the checkpoint was written counts at its default."""
    defaults = json.loads(json.dumps(asdict(TinyConfig())))
    return {k: config.get(k, default) for k, default in defaults.items() if k not in MAY_CHANGE_ON_RESUME}


def _load_weights(ckpt: dict, model, heads=None) -> None:  # type: ignore[no-untyped-def]
    model.load_state_dict(ckpt["model"])
    if heads is not None and ckpt["heads"] is not None:
        heads.load_state_dict(ckpt["heads"])


def load_checkpoint(cfg: TinyConfig, model, opt, heads=None) -> State:  # type: ignore[no-untyped-def]
    path = _checkpoint_path(cfg)
    if not path.is_file():
        return State()
    ckpt = torch.load(path, weights_only=False, map_location="cpu")  # load_state_dict moves to the model's device
    if _identity(json.loads(ckpt["config"])) != _identity(json.loads(json.dumps(asdict(cfg)))):
        raise typer.BadParameter(f"checkpoint {path} was written with another config; move it away to start afresh")
    _load_weights(ckpt, model, heads)
    opt.load_state_dict(ckpt["opt"])  # moments come back in the parameters' dtype
    log.info("resumed from %s at step %d", path, ckpt["state"]["step"])
    saved = {k: v for k, v in ckpt["state"].items() if k != "resumed_from"}
    return State(**saved, resumed_from=saved["step"])


def init_from_checkpoint(cfg: TinyConfig, model, heads=None) -> State:  # type: ignore[no-untyped-def]
    """A fine-tune's start: ``cfg.init_from``'s weights (and read-out heads), its vision pretraining and probes
    kept, its training seconds counted on (the CPU budget is the sum), step 0 of this config's schedule."""
    ckpt = torch.load(cfg.init_from, weights_only=False, map_location="cpu")
    prior = ckpt["state"]
    if cfg.init_vision:
        _load_weights(ckpt, model, heads)
        if not prior["vision_done"]:
            raise typer.BadParameter(f"{cfg.init_from} has not finished its vision pretraining")
    else:
        vision = ("model.vision_tower.", "model.multi_modal_projector.")
        language = {k: v for k, v in ckpt["model"].items() if not k.startswith(vision)}
        missing, unexpected = model.load_state_dict(language, strict=False)
        assert not unexpected and all(k.startswith(vision) for k in missing), (missing, unexpected)
    log.info("fine-tune from %s (step %d, %.0f s of training)", cfg.init_from, prior["step"], prior["elapsed"])
    return State(elapsed=prior["elapsed"], vision_done=cfg.init_vision, probe=prior["probe"] if cfg.init_vision else {},
                 init={"path": cfg.init_from, "step": prior["step"], "elapsed_s": prior["elapsed"],
                       "evals": prior["evals"]})


def write_curve(folder: Path, state: State) -> None:
    """curve.json (training EMA and held-out evaluations) and curve.png beside the checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "curve.json").write_text(json.dumps({"history": state.history, "evals": state.evals}))
    if not state.history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in state.history], [h["acc"] for h in state.history], label="train option acc (EMA)")
    if state.evals:
        steps = [e["step"] for e in state.evals]
        ax.plot(steps, [e["all"] for e in state.evals], "o-", label="held-out honest acc")
        ax.plot(steps, [e["blind"] for e in state.evals], "s--", label="held-out, zero visual tokens")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "curve.png", dpi=80)
    plt.close(fig)


@torch.no_grad()
def evaluate(adapter: LlavaOneVision, clips: list[Clip]) -> dict[str, dict[str, float]]:
    """Honest held-out accuracy per type by option likelihood (``option_loglikelihoods``), with the video
    and with zero visual tokens (the blind floor): {type: {"accuracy", "blind", "n"}} plus "all"."""
    was_training = adapter.model.training
    adapter.model.eval()
    rows: list[tuple[str, bool, bool]] = []
    empty = TokenSet.empty(adapter.text_config.hidden_size, adapter.grid)
    for clip in clips:
        if not clip.questions:
            continue
        tokens = encode_batch(adapter, [clip])[0]
        asks = [(q.prompt, q.choices) for q in clip.questions]
        seen = adapter.option_loglikelihoods_many(asks, tokens)
        blind = adapter.option_loglikelihoods_many(asks, empty)
        for q, s, b in zip(clip.questions, seen, blind, strict=True):
            gold = q.choices.index(q.answer_text)
            rows.append((q.qtype, int(s.argmax()) == gold, int(b.argmax()) == gold))
    adapter.model.train(was_training)
    out: dict[str, dict[str, float]] = {}
    for key in sorted({t for t, _, _ in rows}) + ["all"]:
        sel = [(s, b) for t, s, b in rows if key in (t, "all")]
        out[key] = {"accuracy": float(np.mean([s for s, _ in sel])), "blind": float(np.mean([b for _, b in sel])),
                    "n": len(sel)}
    return out


def train_step(adapter: LlavaOneVision, opt: torch.optim.Optimizer, batch: list[Clip], cfg: TinyConfig,
               heads: GroundingHeads | None = None) -> tuple[float, float, float]:
    """One optimiser step: (loss, option accuracy of the batch, mean visual-token norm)."""
    clips = [c for c in batch if c.questions]
    if not clips:  # e.g. one-frame clips with nothing in view: nothing to ask
        return float("nan"), float("nan"), float("nan")
    loss, stats = forward_batch(adapter, clips, cfg, heads)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss.detach()), stats["acc"], stats["visual_norm"]


@torch.no_grad()
def cell_probe(adapter: LlavaOneVision, train_frames: int = 256, test_frames: int = 64) -> dict[str, float]:
    """Fresh linear probes on the frozen visual tokens: grid cell, colour and shape (held-out test frames)."""
    def feats(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, targets = vision_batch(seed, count, 96, adapter.grid)
        x = torch.cat([adapter.video_features(adapter.pixel_values(frames[i:i + 32])).float()
                       for i in range(0, count, 32)])
        return x.reshape(-1, x.shape[-1]), torch.from_numpy(targets).reshape(-1, 4)

    was_training = adapter.model.training
    adapter.model.eval()
    x_train, t_train = feats(VISION_SEED_BASE - 1_000_000, train_frames)  # below the pretraining seeds
    x_test, t_test = feats(PROBE_SEED, test_frames)
    adapter.model.train(was_training)
    cells = adapter.grid[0] * adapter.grid[1]
    out = {}
    tasks = (("cell", torch.arange(cells).repeat(train_frames), torch.arange(cells).repeat(test_frames)),
             ("colour", t_train[:, 0], t_test[:, 0]), ("shape", t_train[:, 1], t_test[:, 1]))
    for name, y_train, y_test in tasks:
        out[name] = _fit_probe(x_train, y_train, x_test, y_test)
    out["chance_cell"] = 1 / cells
    return out


def _fit_probe(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    mean, std = x.mean(0), x.std(0) + 1e-6
    with torch.enable_grad():
        probe = torch.nn.Linear(x.shape[1], int(max(y.max(), y_test.max())) + 1)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            loss = F.cross_entropy(probe((x - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float((probe((x_test - mean) / std).argmax(-1) == y_test).float().mean())


def build(cfg: TinyConfig) -> tuple:  # type: ignore[type-arg]
    """Tokenizer, model, adapter, heads and optimiser for ``cfg`` (fresh)."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tokenizer = build_tokenizer(cfg.arch.vocab_size, cfg.arch.words)
    model = build_model(cfg.arch, tokenizer, seed=cfg.seed).to(device)
    adapter = adapter_for(model, tokenizer)
    heads = GroundingHeads(cfg.arch.text_hidden, adapter.grid[0] * adapter.grid[1]).to(device)
    groups: list[dict] = [{"params": list(model.parameters()) + list(heads.parameters())}]
    if cfg.vision_lr_scale != 1.0:  # one group otherwise, as the checkpoints written before this option had
        # the read-out heads learn at the tower's rate: with 0 they stay the pretraining's, an anchor that keeps
        # the projected tokens readable (their cells) while the projector learns with the LLM
        vision = {id(p) for p in model.model.vision_tower.parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in vision]},
                  {"params": [p for p in model.parameters() if id(p) in vision] + list(heads.parameters()),
                   "scale": cfg.vision_lr_scale}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    return tokenizer, model, adapter, heads, opt


def run(cfg: TinyConfig, export_only: bool = False) -> dict:
    """Train (resuming from the work dir's checkpoint) for at most ``max_minutes``; when the schedule's
    last step is reached (or ``export_only``), evaluate on the held-out clips and write the model folder."""
    tokenizer, model, adapter, heads, opt = build(cfg)
    state = load_checkpoint(cfg, model, opt, heads)
    if state.resumed_from is None and cfg.init_from:  # no checkpoint of its own yet: the fine-tune starts
        state = init_from_checkpoint(cfg, model, heads)
    if not export_only:
        if not state.vision_done:
            pretrain_vision(cfg, adapter, heads, state)
            factor = calibrate_projector(adapter, vision_batch(VISION_SEED_BASE - 2_000_000, 32, 96, adapter.grid)[0])
            state.probe = {**cell_probe(adapter), "projector_rescale": factor}
            log.info("linear probes on the visual tokens after vision pretraining: %s", json.dumps(state.probe))
            save_checkpoint(cfg, model, opt, state, heads)
        plans = itertools.islice(
            batch_plans(cfg.clips_per_batch, cfg.sizes, cfg.long_share, cfg.seed, cfg.max_frames,
                        cfg.curriculum_steps, cfg.memory_share, honest=True, short_share=cfg.short_share),
            state.step, None)
        evalset = heldout_clips(16, size=128, honest=True) if cfg.eval_every else []
        with contextlib.closing(rendered(plans)) as batches:
            _train_loop(cfg, adapter, opt, state, batches, evalset, heads)
    result = {"steps": state.step, "train_minutes": state.elapsed / 60, "out": None, "heldout": None,
              "resumed_from": state.resumed_from, "checkpoint": str(_checkpoint_path(cfg))}
    if state.step >= cfg.steps or export_only:
        metrics = evaluate(adapter, heldout_clips(cfg.heldout_clips, size=128, honest=True))
        log.info("held-out accuracy %s", json.dumps(metrics))
        probe = cell_probe(adapter)
        write_folder(cfg, model, tokenizer, state, metrics, probe)
        result.update(out=cfg.out, heldout=metrics)
    return result


def pretrain_vision(cfg: TinyConfig, adapter: LlavaOneVision, heads: GroundingHeads, state: State) -> None:
    """Teach the vision tower + projector what the objects look like and where each token sits, before the
    LLM sees them: the read-outs alone on single frames (cheap: no LLM)."""
    from rich.progress import Progress

    vision = [*adapter.model.model.vision_tower.parameters(), *adapter.model.model.multi_modal_projector.parameters()]
    opt = torch.optim.AdamW([*vision, *heads.parameters()], lr=VISION_LR, weight_decay=cfg.weight_decay)
    seed = VISION_SEED_BASE + cfg.seed * 10_000_000
    with Progress() as bar:
        task = bar.add_task("vision pretraining", total=cfg.vision_steps)
        for step in range(cfg.vision_steps):
            started = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = VISION_LR * 0.5 * (1 + math.cos(math.pi * step / cfg.vision_steps))
            size = cfg.sizes[step % len(cfg.sizes)]
            frames, targets = vision_batch(seed, cfg.vision_batch, size, adapter.grid)
            seed += cfg.vision_batch
            feats = adapter.video_features(adapter.pixel_values(frames))
            loss = heads.loss(feats, torch.from_numpy(targets))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.elapsed += time.perf_counter() - started
            bar.update(task, advance=1, description=f"vision pretraining loss {float(loss.detach()):.3f}")
            if step % 50 == 0:
                log.info("vision step %d loss %.3f (%.0f s)", step, float(loss.detach()), state.elapsed)
    state.vision_done = True


def _train_loop(cfg: TinyConfig, adapter, opt, state: State, batches, evalset, heads) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    budget_s, run_s = cfg.max_minutes * 60, 0.0
    columns = [TextColumn("train tiny"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    last = state.history[-1] if state.history else {}
    ema_loss, ema_acc = last.get("loss"), last.get("acc")
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=state.step, info="")
        while state.step < cfg.steps and run_s < budget_s:
            started = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, state.step) * group.get("scale", 1.0)
            loss, acc, norm = train_step(adapter, opt, next(batches), cfg, heads)
            state.step += 1
            spent = time.perf_counter() - started
            state.elapsed += spent
            run_s += spent
            if math.isnan(loss):
                continue
            ema_loss = loss if ema_loss is None else 0.95 * ema_loss + 0.05 * loss
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
            bar.update(task, completed=state.step, info=f"loss {ema_loss:.3f} acc {ema_acc:.2f}")
            if state.step % 25 == 0 or state.step < 25:
                state.history.append({"step": state.step, "loss": round(ema_loss, 4), "acc": round(ema_acc, 3),
                                      "elapsed_s": round(state.elapsed, 1), "s_per_step": round(spent, 2),
                                      "lr": lr_at(cfg, state.step), "visual_norm": round(norm, 3)})
                log.info("step %d loss %.3f acc %.2f lr %.2e visual norm %.2f (%.2f s/step, %.0f s)", state.step,
                         ema_loss, ema_acc, lr_at(cfg, state.step), norm, spent, state.elapsed)
            if evalset and state.step % cfg.eval_every == 0:
                metrics = evaluate(adapter, evalset)
                state.evals.append({"step": state.step, "all": metrics["all"]["accuracy"],
                                    "blind": metrics["all"]["blind"],
                                    **{k: v["accuracy"] for k, v in metrics.items() if k != "all"}})
                log.info("step %d held-out %s", state.step, json.dumps(state.evals[-1]))
            if state.step % cfg.checkpoint_every == 0:
                save_checkpoint(cfg, adapter.model, opt, state, heads)
    save_checkpoint(cfg, adapter.model, opt, state, heads)


def write_folder(cfg: TinyConfig, model, tokenizer, state: State, metrics: dict, probe: dict) -> Path:  # type: ignore[no-untyped-def]
    from bench.tiny_card import model_card

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_preprocessor(out, cfg.arch.image_size)
    marker = {"trained": True, "family": "llava_onevision", "name": "vidmem-tiny", "dtype": "float32",
              "answers": "words", "steps": state.step, "heldout_accuracy": metrics["all"]["accuracy"],
              "blind_accuracy": metrics["all"]["blind"]}
    (out / "vidmem.json").write_text(json.dumps(marker, indent=1))
    (out / "training.json").write_text(json.dumps(
        {"config": asdict(cfg), "history": state.history, "evals": state.evals, "heldout": metrics,
         "probe": {"after_vision_pretraining": state.probe, "final": probe}, "train_seconds": state.elapsed},
        indent=1))
    write_curve(out, state)
    (out / "README.md").write_text(model_card(cfg, state, metrics, probe))
    return out


def cli(
    out: Annotated[str, typer.Option(help="model folder to write when the schedule ends")] = TinyConfig.out,
    work_dir: Annotated[str, typer.Option(help="checkpoint folder (resumed from when present)")] = TinyConfig.work_dir,
    steps: Annotated[int, typer.Option(help="optimiser steps of the whole schedule")] = TinyConfig.steps,
    max_minutes: Annotated[float, typer.Option(help="this run's training time; then checkpoint and stop")] = (
        TinyConfig.max_minutes),
    clips_per_batch: Annotated[int, typer.Option(help="clips per step (all their questions are used)")] = (
        TinyConfig.clips_per_batch),
    eval_every: Annotated[int, typer.Option(help="held-out check every so many steps (0: none)")] = (
        TinyConfig.eval_every),
    threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a shared, busy CPU)")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = TinyConfig.device,
    seed: Annotated[int, typer.Option(help="init and data seed")] = 0,
    lr: Annotated[float, typer.Option(help="peak learning rate of the question stage")] = TinyConfig.lr,
    warmup: Annotated[int, typer.Option(help="warmup steps of the question stage")] = TinyConfig.warmup,
    curriculum_steps: Annotated[int, typer.Option(help="steps of short clips first (then as many to ramp up)")] = (
        TinyConfig.curriculum_steps),
    short_share: Annotated[float, typer.Option(help="after the curriculum, share of short batches with 1-4 frames")] = (
        TinyConfig.short_share),
    grounding_weight: Annotated[float, typer.Option(help="weight of the per-token read-outs (cell, colour, shape)")] = (
        TinyConfig.grounding_weight),
    vision_lr_scale: Annotated[float, typer.Option(help="the vision tower's learning rate / the LLM's")] = (
        TinyConfig.vision_lr_scale),
    init_from: Annotated[str | None, typer.Option(
        help="fine-tune: start from this checkpoint.pt's weights with a fresh optimiser and schedule")] = None,
    init_vision: Annotated[bool, typer.Option(
        help="with --init-from: take its vision tower and projector too (else pretrain them afresh)")] = True,
    export: Annotated[bool, typer.Option(help="no training: evaluate the checkpoint and write the folder")] = False,
) -> None:
    """Train vidmem-tiny v2 from scratch on generated clips (resumable, chained runs) and write the model folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    cfg = TinyConfig(out=out, work_dir=work_dir, steps=steps, max_minutes=max_minutes,
                     clips_per_batch=clips_per_batch, eval_every=eval_every, threads=threads, device=device,
                     seed=seed, lr=lr, warmup=warmup, curriculum_steps=curriculum_steps, init_from=init_from,
                     short_share=short_share,
                     grounding_weight=grounding_weight, vision_lr_scale=vision_lr_scale, init_vision=init_vision)
    result = run(cfg, export_only=export)
    print(json.dumps({k: result[k] for k in ("steps", "train_minutes", "checkpoint", "out")}
                     | {"heldout_accuracy": result["heldout"]["all"]["accuracy"] if result["heldout"] else None,
                        "blind_accuracy": result["heldout"]["all"]["blind"] if result["heldout"] else None}))


if __name__ == "__main__":
    typer.run(cli)
