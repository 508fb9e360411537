"""Recording one attention row without storing attention maps.

A custom attention function is registered with transformers' ``AttentionInterface`` under
``PROBE_ATTN``. It runs the stock SDPA kernel (``transformers.integrations.sdpa_attention.
sdpa_attention_forward``, 5.23) for every module; for the one module a caller asks for, it also
computes ``softmax(q_last k^T * scale)`` for the last query row only (GQA keys repeated, float32),
and can stop the forward right after that layer by raising ``StopForward``.

The recorder is passed through a ``ContextVar`` for the duration of one call: no state is hung on
modules and concurrent callers in other threads do not see each other's recorders.

Hidden states of one decoder layer are recorded the same way (:class:`HiddenRecorder`): a forward
hook, registered once per watched layer (:func:`watch_hidden`), copies that layer's output for the
active recorder of the calling context only and can stop the forward there.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PROBE_ATTN = "vidmem_probe"


class StopForward(Exception):
    """Raised inside the forward right after the probed layer when nothing later is needed."""


@dataclass
class Recorder:
    """What to record: the attention module to watch and whether to stop after it."""

    module: nn.Module
    stop: bool = True
    row: torch.Tensor | None = field(default=None)  # [B, H, Lk] float32 after the call


_ACTIVE: ContextVar[Recorder | None] = ContextVar("vidmem_probe_recorder", default=None)


def last_row_attention(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float | None) -> torch.Tensor:
    """Attention weights of the last query row.

    query [B, H, Lq, d], key [B, Hkv, Lk, d] (post-RoPE), mask bool (True = attend) or additive,
    broadcastable to [B, H, Lq, Lk]. Returns [B, H, Lk] float32.
    """
    groups = query.shape[1] // key.shape[1]
    keys = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = query[:, :, -1:].float() @ keys.transpose(-1, -2) * scale  # [B, H, 1, Lk]
    if attention_mask is not None:
        last = attention_mask[..., -1:, : keys.shape[-2]]
        if last.dtype == torch.bool:
            scores = scores.masked_fill(~last, float("-inf"))
        else:
            scores = scores + last.float()
    return torch.softmax(scores, dim=-1)[:, :, 0]


def probe_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None,
                            **kwargs: object) -> tuple[torch.Tensor, None]:
    """SDPA attention that records the last row for the watched module (see module docstring)."""
    recorder = _ACTIVE.get()
    if recorder is not None and module is recorder.module:
        recorder.row = last_row_attention(query, key, attention_mask, scaling)
        if recorder.stop:
            raise StopForward
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Activate ``recorder`` for the forward passes run inside the block."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


@dataclass
class HiddenRecorder:
    """A decoder layer whose output to record, and whether to stop the forward after it."""

    module: nn.Module
    stop: bool = True
    hidden: torch.Tensor | None = field(default=None)  # [B, L, H] after the call


_HIDDEN: ContextVar[HiddenRecorder | None] = ContextVar("vidmem_hidden_recorder", default=None)
_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_WATCH_LOCK = threading.Lock()


def _hidden_hook(module: nn.Module, args: object, output: object) -> None:
    recorder = _HIDDEN.get()
    if recorder is not None and module is recorder.module:
        recorder.hidden = (output[0] if isinstance(output, tuple) else output).detach()
        if recorder.stop:
            raise StopForward


def watch_hidden(module: nn.Module) -> None:
    """Register the recording hook on ``module`` once (idempotent, thread-safe); it acts only inside
    :func:`recording_hidden` for that module, so other forwards are untouched."""
    with _WATCH_LOCK:
        if module not in _WATCHED:
            module.register_forward_hook(_hidden_hook)
            _WATCHED.add(module)


@contextmanager
def recording_hidden(recorder: HiddenRecorder) -> Iterator[HiddenRecorder]:
    """Activate ``recorder`` for the forward passes run inside the block."""
    token = _HIDDEN.set(recorder)
    try:
        yield recorder
    finally:
        _HIDDEN.reset(token)


AttentionInterface.register(PROBE_ATTN, probe_attention_forward)
AttentionMaskInterface.register(PROBE_ATTN, sdpa_mask)
