"""CaCoVID compression policy network: one LLM decoder layer plus token and frame heads.

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026 (the "compression policy network"). The
paper's own equations could not be read; this follows the released code (LivingFutureLab/CaCoVID,
``src/r1-v/src/open_r1/trainer/llava_onevision/compression_policy.py``, class ``CompressionPolicy``):

- an *interaction layer*: one Qwen2/Llama-style decoder layer (pre-RMSNorm, grouped-query
  self-attention with rotary positions from the LLM's position ids, SwiGLU MLP) whose weights
  are copied from the LLM's decoder layer 0 (:meth:`CompressionPolicy.from_llm_layer`);
- a *token head*: RMSNorm (eps = the LLM's ``rms_norm_eps``) then an MLP
  d -> d/2 -> d/4 -> d/8 -> d/16 -> 2 with SiLU between layers; token score u = z[1] - z[0];
- a *frame head*: the mean of the layer output over a frame's tokens (taken before the norm),
  the same RMSNorm module, then a separate MLP of the same shape; frame score v = y[1] - y[0].

The released code's third ("mode") head gets no gradient there and is unused at inference, so it
is left out. Deviations from the released code, on purpose: the layer is run bidirectionally
(``is_causal=False``, the released code's stated intent; its FlashAttention path may run it causally);
the layer sees the video tokens then the question's embeddings, not the whole chat prompt (no
system/template text); positions are 0..K-1 for the video tokens in time order and the question's
after them (vidmem closes the gaps between memory tokens, as its prompts do); frames may hold
different numbers of tokens (stage-1 output is ragged), so the frame mean is over each frame's own.

Checkpoints carry a header naming the model the policy was trained for (name, hidden size, a hash
of the input-embedding shape); :func:`load_policy` refuses a checkpoint made for another model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "vidmem.cacovid.policy/1"


class PolicyMismatchError(ValueError):
    """A policy checkpoint was made for a different Video LLM than the one it is used with."""


@dataclass(frozen=True)
class PolicyConfig:
    """Shapes of the interaction layer (the LLM's text config values) and the heads."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    head_dim: int = 0  # 0: hidden_size // num_heads
    attention_bias: bool = True  # Qwen2 has q/k/v biases, Llama does not
    head_depth: int = 4  # halvings in the heads: d -> d/2 -> ... -> d/2**depth -> 2

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelSignature:
    """What a policy checkpoint is bound to: the Video LLM's name, width and embedding shape."""

    name: str
    hidden_size: int
    embedding_hash: str

    @classmethod
    def of(cls, name: str, embedding_shape: tuple[int, ...] | torch.Size) -> ModelSignature:
        shape = tuple(int(s) for s in embedding_shape)
        digest = hashlib.sha256(repr(shape).encode()).hexdigest()[:16]
        return cls(name=name, hidden_size=shape[-1], embedding_hash=digest)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (as Qwen2RMSNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Default RoPE tables. positions [L] -> (cos, sin) each [L, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # [L, head_dim/2]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions; parameter names as in HF Qwen2/Llama."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        hd = cfg.dim_per_head
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x [L, D], cos/sin [L, hd] -> [L, D]; bidirectional (no causal mask)."""
        cfg, hd = self.cfg, self.cfg.dim_per_head
        length = x.shape[0]
        q = self.q_proj(x).view(length, cfg.num_heads, hd).transpose(0, 1)  # [H, L, hd]
        k = self.k_proj(x).view(length, cfg.num_kv_heads, hd).transpose(0, 1)  # [Hkv, L, hd]
        v = self.v_proj(x).view(length, cfg.num_kv_heads, hd).transpose(0, 1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = cfg.num_heads // cfg.num_kv_heads
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=False)[0]  # [H, L, hd]
        return self.o_proj(out.transpose(0, 1).reshape(length, cfg.num_heads * hd))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer; ``state_dict`` keys equal an HF Qwen2DecoderLayer's."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x [L, D] -> [L, D]."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


def score_mlp(dim: int, depth: int) -> nn.Sequential:
    """d -> d/2 -> ... -> d/2**depth -> 2 with SiLU between layers (widths floored at 4)."""
    widths = [dim] + [max(dim // 2**i, 4) for i in range(1, depth + 1)]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.SiLU()]
    layers.append(nn.Linear(widths[-1], 2))
    return nn.Sequential(*layers)


@dataclass
class PolicyOutput:
    """Logits of the keep(1)/drop(0) actions. token_logits [K, 2], frame_logits [F', 2]."""

    token_logits: Tensor
    frame_logits: Tensor

    @property
    def token_scores(self) -> Tensor:
        """u = z[1] - z[0], [K]."""
        return self.token_logits[:, 1] - self.token_logits[:, 0]

    @property
    def frame_scores(self) -> Tensor:
        """v = y[1] - y[0], [F']."""
        return self.frame_logits[:, 1] - self.frame_logits[:, 0]


class CompressionPolicy(nn.Module):
    """Scores every video token and frame given the question (the release's ``CompressionPolicy.forward``)."""

    def __init__(self, cfg: PolicyConfig, signature: ModelSignature | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.signature = signature
        self.layer = DecoderLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.token_head = score_mlp(cfg.hidden_size, cfg.head_depth)
        self.frame_head = score_mlp(cfg.hidden_size, cfg.head_depth)

    @classmethod
    def from_llm_layer(
        cls,
        layer0: dict[str, Tensor],
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        rope_theta: float,
        rms_norm_eps: float = 1e-6,
        head_dim: int = 0,
        signature: ModelSignature | None = None,
    ) -> CompressionPolicy:
        """Build from the LLM's decoder-layer-0 ``state_dict`` (keys may carry a ``...layers.0.`` prefix)."""
        sd = {_strip_prefix(k): v.detach().float().clone() for k, v in layer0.items()}
        if "mlp.gate_proj.weight" not in sd:
            raise ValueError(f"not a Qwen2/Llama decoder layer state dict; keys: {sorted(sd)[:8]}")
        cfg = PolicyConfig(
            hidden_size=hidden_size,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=sd["mlp.gate_proj.weight"].shape[0],
            rope_theta=float(rope_theta),
            rms_norm_eps=float(rms_norm_eps),
            head_dim=head_dim,
            attention_bias="self_attn.q_proj.bias" in sd,
        )
        policy = cls(cfg, signature)
        policy.layer.load_state_dict(sd, strict=False)  # extra keys (e.g. rotary buffers) are ignored
        missing = set(policy.layer.state_dict()) - set(sd)
        if missing:
            raise ValueError(f"decoder layer state dict lacks {sorted(missing)}")
        return policy

    def forward(self, question: Tensor, video: Tensor, frame_index: Tensor) -> PolicyOutput:
        """Score tokens and frames.

        question [T, D] question embeddings (LLM input embeddings); video [K, D] video token features
        in time order; frame_index [K] int64 frame id per token (any ids; frames ordered by first use).
        Returns token logits [K, 2] and frame logits [F', 2] for the F' distinct frames in sorted id order.
        """
        num_video = video.shape[0]
        x = torch.cat([video.to(self.norm.weight.dtype), question.to(self.norm.weight.dtype)], dim=0)  # [K+T, D]
        positions = torch.arange(x.shape[0], device=x.device)
        cos, sin = rotary(positions, self.cfg.dim_per_head, self.cfg.rope_theta)
        h = self.layer(x, cos, sin)[:num_video]  # [K, D]
        token_logits = self.token_head(self.norm(h))
        _, inverse = torch.unique(frame_index, return_inverse=True)
        num_frames = int(inverse.max().item()) + 1 if num_video else 0
        sums = torch.zeros(num_frames, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, inverse, h)
        counts = torch.bincount(inverse, minlength=num_frames).clamp(min=1).to(h.dtype)
        frame_logits = self.frame_head(self.norm(sums / counts[:, None]))  # mean before the norm
        return PolicyOutput(token_logits=token_logits, frame_logits=frame_logits)

    def param_groups(self, lr: float, layer_lr_scale: float = 0.1) -> list[dict]:
        """Optimizer groups: heads and norm at ``lr``, the copied decoder layer at ``lr * layer_lr_scale``."""
        layer = list(self.layer.parameters())
        layer_ids = {id(p) for p in layer}
        rest = [p for p in self.parameters() if id(p) not in layer_ids]
        return [{"params": rest, "lr": lr}, {"params": layer, "lr": lr * layer_lr_scale}]


def _strip_prefix(key: str) -> str:
    marker = "layers.0."
    return key.split(marker, 1)[1] if marker in key else key


def save_policy(policy: CompressionPolicy, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``{format, header, config, state_dict, extra}`` with ``torch.save`` (fp32 weights)."""
    if policy.signature is None:
        raise ValueError("policy has no ModelSignature: say which model it was trained for before saving")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "header": asdict(policy.signature),
        "config": asdict(policy.cfg),
        "state_dict": {k: v.detach().cpu().float() for k, v in policy.state_dict().items()},
        "extra": extra or {},
    }
    torch.save(blob, path)
    return path


def read_header(path: str | Path) -> ModelSignature:
    """The model a saved policy was trained for."""
    blob = _read(path)
    return ModelSignature(**blob["header"])


def load_policy(
    path: str | Path, expect: ModelSignature | None = None, map_location: str | torch.device = "cpu"
) -> CompressionPolicy:
    """Load a policy; with ``expect``, raise :class:`PolicyMismatchError` unless it was trained for that model."""
    blob = _read(path, map_location)
    saved = ModelSignature(**blob["header"])
    if expect is not None and (saved.hidden_size, saved.embedding_hash) != (expect.hidden_size, expect.embedding_hash):
        raise PolicyMismatchError(
            f"policy {path} was trained for model {saved.name!r} (hidden size {saved.hidden_size}, embedding "
            f"hash {saved.embedding_hash}) but is being used with {expect.name!r} (hidden size "
            f"{expect.hidden_size}, embedding hash {expect.embedding_hash}); train a policy for this model "
            f"with `vidmem train cacovid --model ...`"
        )
    policy = CompressionPolicy(PolicyConfig(**blob["config"]), saved)
    policy.load_state_dict(blob["state_dict"])
    return policy.eval()


def _read(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no policy checkpoint at {path}")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a CaCoVID policy checkpoint (format {FORMAT})")
    return blob


def num_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
