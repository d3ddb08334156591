"""The CUDA-only paths, checked on a CPU: the KV cache budget against a faked free-memory reading, the
collective timeout, the bound on decode shapes (CUDA graphs), the split-key decode attention and the
torch floor. bench/gpu_check.sh runs them on a GPU."""
import json
import math
import re
import types

import pytest
import torch
import torch.nn.functional as F

import azr
import model as M
from test_model import TINY, hf_tiny, random_prompts

GIB = 2 ** 30


# ----------------------------------------------------------------------------- the KV cache budget
def tiny_model_and_optimizer():
    model = M.Transformer(M.ModelConfig())
    return model, azr.TokenLogprobs(model), torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_pending_update_bytes_are_moments_until_the_first_step_and_gradients_until_the_first_backward():
    model, module, optimizer = tiny_model_and_optimizer()
    numel = sum(p.numel() for p in model.parameters())
    assert azr.pending_update_bytes(module, optimizer) == (8 + 4) * numel  # two fp32 moments + fp32 gradients
    module(torch.randint(0, 256, (2, 5))).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert azr.pending_update_bytes(module, optimizer) == 4 * numel  # the gradients are freed between updates
    assert azr.pending_update_bytes(types.SimpleNamespace(), optimizer) == 4 * numel


def test_kv_cache_budget_from_free_memory_after_empty_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (calls.append("mem_get_info"), (100 * GIB, 141 * GIB))[1])
    cfg = azr.Config()
    pending = 23 * GIB  # e.g. AdamW's moments of 3B parameters, not allocated before the first step
    assert azr.kv_cache_budget(cfg, torch.device("cuda", 0), pending) == azr.KV_CACHE_FREE_FRACTION * 77 * GIB
    assert calls == ["empty_cache", "mem_get_info"]  # cached blocks are returned before the reading
    assert azr.kv_cache_budget(cfg, torch.device("cuda", 0), 120 * GIB) == 0
    assert azr.kv_cache_budget(azr.Config(kv_cache_gib=7.5), torch.device("cuda", 0), pending) == 7.5 * GIB


def test_kv_cache_rows_follow_the_budget(monkeypatch):
    """sampler_cache on 'CUDA' (a CPU KVCache stands in): rows = budget // row bytes, at most
    generation_batch_size; fewer rows than n_solve_samples is a one-line error."""
    made = {}

    class RecordedCache:
        bytes_per_token = staticmethod(M.KVCache.bytes_per_token)

        def __init__(self, config, rows, capacity, dtype, device, **buckets):
            made.update(rows=rows, capacity=capacity, dtype=dtype, **buckets)

    monkeypatch.setattr(azr, "KVCache", RecordedCache)
    with open("data/configs/qwen2.5-coder-3b.json") as f:
        config = M.ModelConfig.from_hf(json.load(f))
    row_bytes = (6144 + 8096) * M.KVCache.bytes_per_token(config, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (100 * GIB, 141 * GIB))
    azr.sampler_cache(azr.Config(), config, torch.device("cuda", 0), pending_bytes=23 * GIB)
    assert made["rows"] == int(0.5 * 77 * GIB // row_bytes) == 78
    assert made["capacity"] == 6144 + 8096 and made["dtype"] == torch.bfloat16 and made["cuda_graphs"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * GIB, 141 * GIB))
    with pytest.raises(SystemExit, match="fewer than --n-solve-samples 8"):
        azr.sampler_cache(azr.Config(), config, torch.device("cuda", 0), pending_bytes=8 * GIB)


# ----------------------------------------------------------------------------- the collective timeout
def test_process_group_gets_the_long_collective_timeout(monkeypatch):
    got = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(azr.dist, "is_initialized", lambda: bool(got))
    monkeypatch.setattr(azr.dist, "init_process_group", lambda backend, **kwargs: got.update(backend=backend, **kwargs))
    monkeypatch.setattr(azr.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(azr.dist, "get_world_size", lambda: 2)
    assert azr.setup_distributed(azr.Config(device="cpu")) == (0, 2, torch.device("cpu"))
    assert got == {"backend": "gloo", "timeout": azr.COLLECTIVE_TIMEOUT}
    assert azr.COLLECTIVE_TIMEOUT.total_seconds() >= 3600  # nccl's default of 10 minutes is far too short


# ----------------------------------------------------------------------------- decode shapes
def test_decode_shapes_are_few_and_pad_by_at_most_a_quarter():
    cache = M.KVCache(M.ModelConfig(), rows=128, capacity=6144 + 8096, dtype=torch.float32, device="cpu",
                      row_bucket=8, length_bucket=256)
    assert cache.max_graphs() == 12 * 19  # multiples of 8 rows and 256 slots would give 16 * 56 = 896
    for live in range(1, 129):
        rows, _ = cache.decode_shape(live, 256)
        assert live <= rows <= 128 and rows % 8 == 0 and rows <= max(8, 1.25 * live + 8)
    previous = 0
    for length in range(1, cache.capacity + 1):
        _, padded = cache.decode_shape(1, length)
        assert length <= padded <= cache.capacity and padded >= previous
        assert padded == cache.capacity or (padded % 256 == 0 and padded <= max(256, 1.25 * length + 256))
        previous = padded
    exact = M.KVCache(M.ModelConfig(), rows=5, capacity=40, dtype=torch.float32, device="cpu")
    assert exact.decode_shape(3, 17) == (3, 17)  # buckets of 1: the CPU's exact shapes


# ----------------------------------------------------------------------------- split-key decode attention
@pytest.mark.parametrize("dtype,length", [(torch.float32, 1024), (torch.float32, 1000), (torch.bfloat16, 1000)])
def test_split_key_attention_equals_sdpa(dtype, length):
    generator = torch.Generator().manual_seed(0)
    rows, kv_heads, group, head_dim = 3, 2, 7, 64
    q = torch.randn(rows, kv_heads, group, head_dim, generator=generator).to(dtype)
    k = (3 * torch.randn(rows, kv_heads, length, head_dim, generator=generator)).to(dtype)
    v = torch.randn(rows, kv_heads, length, head_dim, generator=generator).to(dtype)
    positions = torch.tensor([5, 700, length - 1])  # row 0 attends 6 slots: most chunks wholly masked
    mask = (torch.arange(length) <= positions[:, None])[:, None, None, :]
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    got = M._split_key_attention(q, k, v, mask, chunk=256)
    assert got.dtype == dtype and got.shape == expected.shape
    # no further from the exact result than the path it replaces, run in the same dtype
    current_error = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).float() - expected).abs().max()
    assert (got.float() - expected).abs().max() <= current_error + 1e-5
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)
    # the split is in the keys only: a row sees what the mask lets it see, nothing of the masked slots
    v_poisoned = v.clone()
    v_poisoned[0, :, 6:] = 1e4
    torch.testing.assert_close(M._split_key_attention(q, k, v_poisoned, mask, chunk=256), got)


def test_greedy_decode_with_split_key_attention_equals_the_default(monkeypatch):
    """The model's decode through the split path (forced on the CPU, chunks of 8 slots) gives the
    tokens and log-probs of the default path, with compaction and padded row and length buckets."""
    hf = hf_tiny("qwen2")
    config = M.ModelConfig.from_hf(hf.config.to_dict())
    ours = M._build(config, hf.state_dict().get, "model.layers.", "model.embed_tokens.weight", "model.norm.weight",
                    "lm_head.weight")
    prompts = random_prompts([4, 13, 1, 8, 20, 6, 11])
    monkeypatch.setattr(M, "FINISH_CHECK_EVERY", 2)

    def run(stop_ids):
        cache = M.KVCache(config, rows=12, capacity=64, dtype=torch.float32, device="cpu", row_bucket=4,
                          length_bucket=8)
        return M.generate(ours, prompts, 30, temperature=0, stop_ids=stop_ids, logprobs=True, cache=cache)

    unstopped = [samples[0].tokens for samples in run([])]
    # the stop token that ends the rows at the most different steps
    stop = max(range(TINY["vocab_size"]), key=lambda t: len({row.index(t) for row in unstopped if t in row[:25]}))
    default = run([stop])
    split_calls = []

    def split_attention(q, k, v, mask):
        split_calls.append(k.shape[2])
        return M._split_key_attention(q, k, v, mask, 8)

    monkeypatch.setattr(M, "_decode_attention", split_attention)
    split = run([stop])
    assert len(set(split_calls)) > 1  # several length buckets went through it
    for a, b in zip(default, split):
        assert a[0].tokens == b[0].tokens
        torch.testing.assert_close(torch.tensor(a[0].logprobs), torch.tensor(b[0].logprobs), rtol=0, atol=1e-5)
    assert len({len(s[0].tokens) for s in default}) > 1  # staggered stops: rows finished at different steps


# ----------------------------------------------------------------------------- the torch floor
API_SINCE = {  # what azr uses -> the torch release that made it public
    "torch.distributed.fsdp.fully_shard, FSDPModule, MixedPrecisionPolicy": (2, 6),
    "scaled_dot_product_attention(enable_gqa=...)": (2, 5),
    "torch.distributed.tensor.DTensor": (2, 5),
    "F.rms_norm, torch.get_autocast_dtype": (2, 4),
}


def test_requirements_torch_floor_covers_the_apis_used():
    with open("requirements.txt") as f:
        floor = re.search(r"^torch>=(\d+)\.(\d+)", f.read(), re.MULTILINE)
    assert floor, "requirements.txt pins no torch floor"
    assert tuple(map(int, floor.groups())) >= max(API_SINCE.values())
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: F401
    assert math.isfinite(F.scaled_dot_product_attention(torch.ones(1, 4, 2, 8), torch.ones(1, 2, 2, 8),
                                                        torch.ones(1, 2, 2, 8), enable_gqa=True).sum().item())
