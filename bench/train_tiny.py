"""Train vidmem-tiny from scratch on generated clips and questions (``vidmem train tiny``).

Each step renders a batch of clips, encodes them through the model's own vision tower (with
gradients) via the vlm adapter (``video_features`` -> TokenBlock -> TokenSet), builds every
question's prompt with ``build_prompt`` -- the exact prompt ``answer``/``choice_logprobs`` use --
and teacher-forces the answer letter (plus the end-of-turn token). The prompt prefix up to the
question (text + timestamps + visual tokens) is identical for all questions of a clip, so it is
run once per clip and its KV cache is shared by the questions: exact, only cheaper.

The learning rate follows a cosine over ``progress = max(step / steps, elapsed / budget)`` so
that a run always anneals and ends within ``max_minutes``. Checkpoints (model, optimiser, step,
elapsed) are written every ``checkpoint_every`` steps and picked up again on restart.

    python -m bench.train_tiny --out models/vidmem-tiny
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

from bench.questions import ALL_NAMES
from bench.streamgen import DIRECTIONS
from bench.tiny_data import (
    IGNORE,
    POSITION_SCALE,
    VISION_SEED_BASE,
    Clip,
    TrackTargets,
    batch_plans,
    cell_targets,
    heldout_clips,
    rendered,
    track_targets,
    vision_batch,
)
from bench.tiny_model import Arch, build_model, build_tokenizer, letter_ids, save_preprocessor
from compression.tokens import TokenBlock
from vlm.base import IGNORE_INDEX
from vlm.llava_onevision import LlavaOneVision
from vlm.loader import resolve_device

log = logging.getLogger(__name__)

VISION_LR = 3e-3  # peak learning rate of the vision pretraining (cosine to 0 over its steps)
POSITION_UNITS = 6  # the centre read-out counts in 1/6 of the frame (one 16 px patch at 96 px)
# beside the question loss the centre read-out keeps what the vision pretraining taught at a tenth of
# its weight (at full weight the answer accuracy stalled; at a tenth it still did, see TrackHeads)
GROUNDING_POSITION_WEIGHT = 0.1


@dataclass
class TinyConfig:
    out: str = "models/vidmem-tiny"
    work_dir: str = "vidmem-data/train-tiny"
    steps: int = 4000
    max_minutes: float = 55.0  # vision pretraining included; the cosine anneals within it
    clips_per_batch: int = 8
    sizes: tuple[int, ...] = (96, 112, 128)
    long_share: float = 0.15
    max_frames: int = 16  # short clips have 4..max_frames frames
    captions: bool = True  # also teacher-force free-text clip descriptions (dense grounding signal)
    caption_weight: float = 1.0  # caption token loss relative to the answer-letter loss
    grounding: bool = True  # per-cell colour/shape read-outs on the visual tokens (training only)
    # experimental, off in the shipped recipe (see TrackHeads): the object-centre read-out of the grounding
    # (x GROUNDING_POSITION_WEIGHT beside the questions) and the LLM-side track read-outs
    centre_weight: float = 0.0
    track_layer: int = 0  # LLM layer whose visual-token states feed the track read-outs (0: none; capped at depth)
    track_weight: float = 0.25  # weight of those read-outs' loss against the answer-letter loss
    vision_steps: int = 900  # pretraining of vision tower + projector on the read-outs alone (needs grounding)
    vision_batch: int = 64  # frames per vision pretraining step
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.01
    curriculum_steps: int = 300  # the first steps use short clips (1 to 4 frames, no long-span ones), then ramp up
    heldout_clips: int = 48
    eval_every: int = 200  # held-out accuracy on 16 clips every so many steps (0: only at the end)
    checkpoint_every: int = 50
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda (the shipped model was trained on the CPU)
    seed: int = 0
    arch: Arch = field(default_factory=Arch)


def adapter_for(model, tokenizer) -> LlavaOneVision:  # type: ignore[no-untyped-def]
    adapter = LlavaOneVision(model, tokenizer, name="vidmem-tiny", trained=False)
    model.train()
    return adapter


class GroundingHeads(torch.nn.Module):
    """Training-only linear read-outs of colour and shape from every visual token (not shipped).

    The answer letter is one token per question, too sparse a signal to teach a vision tower from
    scratch what an object looks like; these heads give every visual token of every frame a target
    (which object, if any, has its centre in the token's cell), so the visual tokens become linearly
    readable object descriptions early and the LLM only has to learn to use them."""

    def __init__(self, dim: int, classes: int = 5) -> None:
        super().__init__()
        self.colour = torch.nn.Linear(dim, classes)
        self.shape = torch.nn.Linear(dim, classes)
        self.position = torch.nn.Linear(dim, 2)

    def loss(self, feats: torch.Tensor, targets: torch.Tensor, position_weight: float = 1.0) -> torch.Tensor:
        """feats [F, N, D], targets int64 [F, N, 4] (``cell_targets``) -> colour and shape cross-entropy
        plus ``position_weight`` x a smooth-L1 on the object centre, in units of 1/``POSITION_UNITS`` of
        the frame."""
        flat, tgt = feats.reshape(-1, feats.shape[-1]).float(), targets.reshape(-1, 4).to(feats.device)
        loss = F.cross_entropy(self.colour(flat), tgt[:, 0]) + F.cross_entropy(self.shape(flat), tgt[:, 1])
        held = tgt[:, 0] > 0
        if held.any():
            centre = tgt[held, 2:].float() * (POSITION_UNITS / POSITION_SCALE)
            loss = loss + position_weight * F.smooth_l1_loss(self.position(flat[held]), centre)
        return loss


class TrackHeads(torch.nn.Module):
    """Training-only linear read-outs of the clip's history from the LLM's visual-token states at one
    layer (not shipped): per token, the direction its object moves and whether the object is new
    in this frame; per frame, which objects were seen before and which of those are gone.

    The cross-frame question types (direction, order, which left last) measured at chance with the
    answer letter as the only signal: one token per question does not show a 4-layer LLM that it
    should compare a token with the same object in earlier frames. These targets ask for exactly
    that comparison at every visual token, causally (see ``tiny_data.track_targets``), so the
    question-answering layers above would find it precomputed.

    Measured on the default 128-wide, 4-layer vidmem-tiny (hence off by default): without the centre
    read-out the direction read-out stays at chance (0.27 at step 525; a 32 px cell hides 2-12 px
    moves), onset reaches 0.95. With it (``centre_weight`` 1, layer 2) direction reaches 0.93 and
    onset 0.98 by step 1000, but the answer accuracy stalls at 0.37 from step 400 on (shipped
    recipe: 0.55 at step 1000) and held-out "present" falls to chance as the direction read-out
    rises -- four runs (centre in 1/24 or 1/6 frame units, track weight 0.5 or 0.25, LLM 128 or
    192 wide) alike: at this size the read-outs compete with the answer path instead of feeding it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.direction = torch.nn.Linear(dim, len(DIRECTIONS))
        self.onset = torch.nn.Linear(dim, 2)
        self.history = torch.nn.Linear(dim, 2 * len(ALL_NAMES))

    def loss(self, states: torch.Tensor, targets: list[TrackTargets]) -> tuple[torch.Tensor, dict[str, float]]:
        """states [C, F, N, D] (clip, frame, cell), one TrackTargets per clip -> (loss, accuracies)."""
        flat = states.float()
        cells = torch.from_numpy(np.stack([t.cells for t in targets])).to(flat.device)  # [C, F, N, 2]
        history = torch.from_numpy(np.stack([t.history for t in targets])).to(flat.device)  # [C, F, 2 * names]
        mask = torch.from_numpy(np.stack([t.history_mask for t in targets])).to(flat.device)  # [C, F]
        total = flat.new_zeros(())
        stats: dict[str, float] = {}
        for name, head, tgt in (("direction", self.direction, cells[..., 0]), ("onset", self.onset, cells[..., 1])):
            sel = tgt != IGNORE
            if sel.any():
                logits = head(flat[sel])
                total = total + F.cross_entropy(logits, tgt[sel])
                stats[name] = float((logits.argmax(-1) == tgt[sel]).float().mean())
        if mask.any():
            logits = self.history(flat.mean(2)[mask])  # [M, 2 * names]: the frame's tokens pooled
            total = total + F.binary_cross_entropy_with_logits(logits, history[mask])
            stats["history"] = float(((logits > 0).float() == history[mask]).all(-1).float().mean())
        return total, stats


def encode_batch(adapter: LlavaOneVision, clips: list[Clip]) -> list:  # type: ignore[type-arg]
    """Differentiable TokenSets, one per clip (one vision-tower call for all frames of the batch)."""
    return _encode(adapter, clips)[1]


def _encode(adapter: LlavaOneVision, clips: list[Clip]) -> tuple[torch.Tensor, list]:  # type: ignore[type-arg]
    pixels = torch.cat([adapter.pixel_values(c.frames) for c in clips])  # [sum F, 3, S, S]
    feats = adapter.video_features(pixels)  # [sum F, N, D]
    out, start = [], 0
    for clip in clips:
        f = len(clip.times)
        block = TokenBlock(feats[start : start + f], torch.tensor(clip.times, dtype=torch.float64), adapter.grid)
        out.append(block.to_tokenset())
        start += f
    return feats, out


def _common_prefix(rows: list[torch.Tensor]) -> int:
    n = min(len(r) for r in rows) - 1
    for r in rows[1:]:
        diff = (r[:n] != rows[0][:n]).nonzero()
        n = int(diff[0, 0]) if len(diff) else n
    return n


def clip_prompts(adapter: LlavaOneVision, clip: Clip, tokens, with_captions: bool) -> list:  # type: ignore[no-untyped-def]
    """Every question of the clip (answer letter), then optionally its captions (free-text answers)."""
    out = [adapter.build_prompt(q.text, tokens, True, answer_text=q.answer) for q in clip.questions]
    if with_captions:
        out += [adapter.build_prompt(text, tokens, True, answer_text=ans) for text, ans in clip.captions]
    return out


def forward_batch(
    adapter: LlavaOneVision,
    clips: list[Clip],
    with_captions: bool = False,
    heads: GroundingHeads | None = None,
    caption_weight: float = 1.0,
    tracks: TrackHeads | None = None,
    track_layer: int = 2,
    track_weight: float = TinyConfig.track_weight,
    centre_weight: float = TinyConfig.centre_weight,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """Teacher-forced loss over every prompt of the batch; returns (loss, logits [B, V] and targets [B] at
    each prompt's first answer token; the multiple-choice questions come first within each clip; the
    track read-outs' accuracies).

    loss = mean letter loss of the questions + ``caption_weight`` x mean token loss of the captions
    (+ the grounding heads' loss when ``heads`` is given, + ``track_weight`` x the track read-outs' loss
    on layer ``track_layer`` when ``tracks`` is given): weighted per kind so that the many caption
    tokens do not drown the one-token answers."""
    device = adapter.device
    feats, token_sets = _encode(adapter, clips)
    prompts = [clip_prompts(adapter, clip, ts, with_captions) for clip, ts in zip(clips, token_sets, strict=True)]
    flat = [p for ps in prompts for p in ps]
    plen = _common_prefix([p.input_ids for p in flat])
    lm = adapter.language_model
    prefix = torch.cat([adapter.embed(ps[0])[:, :plen] for ps in prompts])  # [C, P, D]
    out = lm(inputs_embeds=prefix, use_cache=True, output_hidden_states=tracks is not None)
    cache = out.past_key_values
    track_loss, stats = None, {}
    if tracks is not None:
        rows = torch.stack([ps[0].token_rows for ps in prompts]).to(device)  # [C, K], K = F * N (frame-major)
        states = torch.stack([out.hidden_states[track_layer][i, r] for i, r in enumerate(rows)])  # [C, K, D]
        states = states.reshape(len(clips), len(clips[0].times), -1, states.shape[-1])  # [C, F, N, D]
        targets = [track_targets(c.tracks, c.times, adapter.grid) for c in clips]
        track_loss, stats = tracks.loss(states, targets)
    owner = torch.tensor([i for i, ps in enumerate(prompts) for _ in ps], device=device)
    cache.batch_select_indices(owner)
    suffix, mask, labels = _pad_suffixes(adapter, flat, plen)
    positions = plen + torch.arange(suffix.shape[1], device=device)[None].expand(len(flat), -1)
    attn = torch.cat([torch.ones(len(flat), plen, dtype=torch.long, device=device), mask], dim=1)
    hidden = lm(
        inputs_embeds=suffix, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True
    ).last_hidden_state  # [B, S, D]
    # the first suffix token is predicted by the prefix's last position; labels start inside the suffix
    target = labels[:, 1:]
    sel = target != IGNORE_INDEX
    logits = adapter.model.lm_head(hidden[:, :-1][sel])  # [T, V]
    token_loss = F.cross_entropy(logits.float(), target[sel], reduction="none")  # [T]
    is_mc = torch.tensor(
        [i < len(c.questions) for c, ps in zip(clips, prompts, strict=True) for i in range(len(ps))], device=device
    )
    token_mc = is_mc[:, None].expand_as(sel)[sel]  # [T]
    loss = token_loss[token_mc].mean()
    if (~token_mc).any():
        loss = loss + caption_weight * token_loss[~token_mc].mean()
    if heads is not None:
        targets = torch.cat([torch.from_numpy(cell_targets(c.tracks, c.times, adapter.grid)) for c in clips])
        loss = loss + heads.loss(feats, targets, centre_weight * GROUNDING_POSITION_WEIGHT)
    if track_loss is not None:
        loss = loss + track_weight * track_loss
    first = sel.float().argmax(1)  # position of each answer letter
    every = torch.arange(len(flat), device=device)
    letter_logits = adapter.model.lm_head(hidden[every, first])
    return loss, letter_logits.detach(), target[every, first], stats


def _pad_suffixes(adapter: LlavaOneVision, prompts: list, plen: int) -> tuple[torch.Tensor, ...]:  # type: ignore[type-arg]
    rows = [adapter.embed(p)[0, plen:] for p in prompts]  # each [S_i, D]
    emb = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # [B, S, D], right-padded
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
    labels = torch.nn.utils.rnn.pad_sequence(
        [p.labels[plen:] for p in prompts], batch_first=True, padding_value=IGNORE_INDEX
    )
    return emb, mask.to(emb.device), labels.to(emb.device)


def lr_at(cfg: TinyConfig, step: int, progress: float) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@dataclass
class State:
    step: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    vision_done: bool = False


def _checkpoint_path(cfg: TinyConfig) -> Path:
    return Path(cfg.work_dir) / "checkpoint.pt"


def save_checkpoint(cfg: TinyConfig, model, opt, state: State, heads=None) -> None:  # type: ignore[no-untyped-def]
    """Model, optimiser, progress and the training-only read-out heads (``heads``: one module holding them)."""
    path = _checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "heads": heads.state_dict() if heads is not None else None,
            "opt": opt.state_dict(),
            "state": asdict(state),
            "config": json.dumps(asdict(cfg)),
        },
        tmp,
    )
    tmp.replace(path)


# how long a run goes, where it writes and what it runs on may change on resume
RUN_LENGTH = ("out", "work_dir", "steps", "max_minutes", "eval_every", "checkpoint_every", "heldout_clips")
MAY_CHANGE_ON_RESUME = (*RUN_LENGTH, "threads", "device")


def _identity(config: dict) -> dict:
    """The config fields a checkpoint must agree on (run length, output paths and device may change on resume)."""
    return {k: v for k, v in config.items() if k not in MAY_CHANGE_ON_RESUME}


def load_checkpoint(cfg: TinyConfig, model, opt, heads=None) -> State:  # type: ignore[no-untyped-def]
    path = _checkpoint_path(cfg)
    if not path.is_file():
        return State()
    ckpt = torch.load(path, weights_only=False, map_location="cpu")  # load_state_dict moves to the model's device
    if _identity(json.loads(ckpt["config"])) != _identity(json.loads(json.dumps(asdict(cfg)))):
        log.warning("checkpoint %s was written with another config; starting afresh", path)
        return State()
    model.load_state_dict(ckpt["model"])
    if heads is not None:
        heads.load_state_dict(ckpt["heads"])
    opt.load_state_dict(ckpt["opt"])
    log.info("resumed from %s at step %d", path, ckpt["state"]["step"])
    saved = {k: v for k, v in ckpt["state"].items() if k != "resumed_from"}
    return State(**saved, resumed_from=saved["step"])


def evaluate(adapter: LlavaOneVision, clips: list[Clip]) -> dict[str, dict[str, float]]:
    """Held-out accuracy per question type, scored like ``choice_logprobs`` (valid letters only)."""
    from bench.tiny_model import accuracy_by_type

    letters = letter_ids(adapter.tokenizer)
    results: list[tuple[str, bool]] = []
    was_training = adapter.model.training
    adapter.model.eval()
    with torch.no_grad():
        for clip in clips:
            if not clip.questions:
                continue
            logits, target = forward_batch(adapter, [clip])[1:3]
            for q, row, t in zip(clip.questions, logits, target, strict=True):
                valid = torch.tensor(letters[: len(q.choices)], device=row.device)
                results.append((q.qtype, bool(valid[row[valid].argmax()] == t)))
    adapter.model.train(was_training)
    return accuracy_by_type(results)


def train_step(
    adapter: LlavaOneVision,
    opt: torch.optim.Optimizer,
    batch: list[Clip],
    captions: bool = True,
    heads: GroundingHeads | None = None,
    caption_weight: float = 1.0,
    tracks: TrackHeads | None = None,
    track_layer: int = 2,
    track_weight: float = TinyConfig.track_weight,
    centre_weight: float = TinyConfig.centre_weight,
) -> tuple[float, float, dict[str, float]]:
    """One optimiser step: (loss, answer-letter accuracy, track read-out accuracies)."""
    clips = [c for c in batch if c.questions]
    if not clips:  # e.g. one-frame clips with nothing in view: nothing to ask
        return float("nan"), float("nan"), {}
    loss, logits, target, stats = forward_batch(
        adapter, clips, captions, heads, caption_weight, tracks, track_layer, track_weight, centre_weight
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    per_clip = [len(c.questions) + len(c.captions) * captions for c in clips]
    is_mc = torch.tensor(
        [i < len(c.questions) for c, n in zip(clips, per_clip, strict=True) for i in range(n)], device=target.device
    )
    acc = float((logits.argmax(-1) == target)[is_mc].float().mean())
    return float(loss.detach()), acc, stats


def run(cfg: TinyConfig) -> dict:
    """Train (resuming from the work dir's checkpoint), evaluate on held-out clips, write the model folder."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tokenizer = build_tokenizer(cfg.arch.vocab_size)
    model = build_model(cfg.arch, tokenizer, seed=cfg.seed).to(device)
    adapter = adapter_for(model, tokenizer)
    heads = torch.nn.ModuleDict()
    if cfg.grounding:
        heads["grounding"] = GroundingHeads(cfg.arch.text_hidden)
    if cfg.track_layer:
        heads["tracks"] = TrackHeads(cfg.arch.text_hidden)
    heads.to(device)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state = load_checkpoint(cfg, model, opt, heads)
    plans = itertools.islice(
        batch_plans(cfg.clips_per_batch, cfg.sizes, cfg.long_share, cfg.seed, cfg.max_frames, cfg.curriculum_steps),
        state.step,
        None,
    )
    heldout = heldout_clips(cfg.heldout_clips, size=128)
    if "grounding" in heads and not state.vision_done:
        pretrain_vision(cfg, adapter, heads["grounding"], state)
        save_checkpoint(cfg, model, opt, state, heads)
    with contextlib.closing(rendered(plans)) as batches:
        _train_loop(cfg, adapter, opt, state, batches, heldout, heads)
    metrics = evaluate(adapter, heldout)
    log.info("held-out accuracy %s", json.dumps(metrics))
    write_folder(cfg, model, tokenizer, state, metrics)
    return {
        "steps": state.step,
        "train_minutes": state.elapsed / 60,
        "heldout": metrics,
        "out": cfg.out,
        "resumed_from": state.resumed_from,
    }


def pretrain_vision(cfg: TinyConfig, adapter: LlavaOneVision, heads: GroundingHeads, state: State) -> None:
    """Teach the vision tower + projector what the objects look like before the LLM sees them: the
    grounding read-outs alone on single frames (cheap: no LLM), so that the question training starts
    from visual tokens that already say which colour and shape sits where."""
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
            loss = heads.loss(feats, torch.from_numpy(targets), cfg.centre_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.elapsed += time.perf_counter() - started
            bar.update(task, advance=1, description=f"vision pretraining loss {float(loss.detach()):.3f}")
            if step % 100 == 0:
                log.info("vision step %d loss %.3f (%.0f s)", step, float(loss.detach()), state.elapsed)
    state.vision_done = True


def _train_loop(cfg: TinyConfig, adapter, opt, state: State, batches, heldout, heads) -> None:  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    budget_s = cfg.max_minutes * 60
    columns = [
        TextColumn("train tiny"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    ema_loss, ema_acc = None, None
    ema_tracks: dict[str, float] = {}  # track read-out accuracies (diagnostic: does the LLM track objects?)
    with Progress(*columns) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=state.step, info="")
        while state.step < cfg.steps and state.elapsed < budget_s:
            started = time.perf_counter()
            progress = max(state.step / cfg.steps, state.elapsed / budget_s)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, state.step, progress)
            loss, acc, stats = train_step(
                adapter,
                opt,
                next(batches),
                cfg.captions,
                heads["grounding"] if "grounding" in heads else None,
                cfg.caption_weight,
                heads["tracks"] if "tracks" in heads else None,
                min(cfg.track_layer, cfg.arch.text_layers),
                cfg.track_weight,
                cfg.centre_weight,
            )
            state.step += 1
            state.elapsed += time.perf_counter() - started
            if math.isnan(loss):
                continue
            ema_loss = loss if ema_loss is None else 0.95 * ema_loss + 0.05 * loss
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
            for key, value in stats.items():
                ema_tracks[key] = 0.95 * ema_tracks.get(key, value) + 0.05 * value
            bar.update(task, completed=state.step, info=f"loss {ema_loss:.3f} acc {ema_acc:.2f}")
            if state.step % 25 == 0 or state.step < 25:
                state.history.append(
                    {
                        "step": state.step,
                        "loss": round(ema_loss, 4),
                        "acc": round(ema_acc, 3),
                        "elapsed_s": round(state.elapsed, 1),
                        **{f"track_{k}": round(v, 3) for k, v in ema_tracks.items()},
                    }
                )
                log.info(
                    "step %d loss %.3f acc %.2f tracks %s (%.0f s)",
                    state.step,
                    ema_loss,
                    ema_acc,
                    " ".join(f"{k} {v:.2f}" for k, v in ema_tracks.items()),
                    state.elapsed,
                )
            if cfg.eval_every and state.step % cfg.eval_every == 0:
                log.info("step %d held-out %s", state.step, json.dumps(evaluate(adapter, heldout[:16])))
            if state.step % cfg.checkpoint_every == 0:
                save_checkpoint(cfg, adapter.model, opt, state, heads)
    save_checkpoint(cfg, adapter.model, opt, state, heads)


def write_folder(cfg: TinyConfig, model, tokenizer, state: State, metrics: dict) -> Path:  # type: ignore[no-untyped-def]
    from bench.tiny_card import model_card

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_preprocessor(out, cfg.arch.image_size)
    marker = {
        "trained": True,
        "family": "llava_onevision",
        "name": "vidmem-tiny",
        "dtype": "float32",  # trained in float32; bf16 costs accuracy and saves nothing at this size
        "steps": state.step,
        "heldout_accuracy": metrics["all"]["accuracy"],
    }
    (out / "vidmem.json").write_text(json.dumps(marker, indent=1))
    (out / "training.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "history": state.history, "heldout": metrics, "train_seconds": state.elapsed},
            indent=1,
        )
    )
    (out / "README.md").write_text(model_card(cfg, state, metrics))
    return out


def cli(
    out: Annotated[str, typer.Option(help="model folder to write")] = "models/vidmem-tiny",
    work_dir: Annotated[str, typer.Option(help="checkpoints (resumed from when present)")] = "vidmem-data/train-tiny",
    steps: Annotated[int, typer.Option(help="optimiser steps")] = TinyConfig.steps,
    max_minutes: Annotated[
        float, typer.Option(help="wall-clock budget; the schedule anneals within it")
    ] = TinyConfig.max_minutes,
    clips_per_batch: Annotated[
        int, typer.Option(help="clips per step (all their questions are used)")
    ] = TinyConfig.clips_per_batch,
    eval_every: Annotated[
        int, typer.Option(help="held-out check every so many steps (0: at the end)")
    ] = TinyConfig.eval_every,
    threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a shared, busy CPU)")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = TinyConfig.device,
    text_layers: Annotated[int, typer.Option(help="LLM depth")] = Arch.text_layers,
    text_hidden: Annotated[int, typer.Option(help="LLM width (a multiple of the 4 heads)")] = Arch.text_hidden,
    seed: Annotated[int, typer.Option(help="init and data seed")] = 0,
    track_layer: Annotated[
        int, typer.Option(help="LLM layer of the track read-outs (0: none)")
    ] = TinyConfig.track_layer,
    centre_weight: Annotated[
        float, typer.Option(help="weight of the grounding's object-centre read-out (0: none)")
    ] = TinyConfig.centre_weight,
) -> None:
    """Train vidmem-tiny from scratch on generated clips (resumable) and write the model folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    cfg = TinyConfig(
        out=out,
        work_dir=work_dir,
        steps=steps,
        max_minutes=max_minutes,
        clips_per_batch=clips_per_batch,
        eval_every=eval_every,
        threads=threads,
        device=device,
        seed=seed,
        arch=Arch(text_layers=text_layers, text_hidden=text_hidden),
        track_layer=track_layer,
        centre_weight=centre_weight,
    )
    result = run(cfg)
    print(
        json.dumps(
            {
                "steps": result["steps"],
                "train_minutes": round(result["train_minutes"], 2),
                "heldout_accuracy": result["heldout"]["all"]["accuracy"],
                "out": result["out"],
            }
        )
    )


if __name__ == "__main__":
    typer.run(cli)
