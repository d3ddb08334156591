"""Sampling throughput: model.generate against transformers' generate on the same weights and prompts.

Both sample at temperature 1 with top_p 1 (top_k off) and ignore stop tokens, so every row produces
exactly --new-tokens tokens; tokens/s = batch * new tokens / wall time, prefill included. Prompts are
random token ids of mixed lengths (64..256), left-padded with an attention mask for transformers.
Ours decodes in a KV cache made once per batch size, as a training run keeps one: on CUDA with row and
length buckets and CUDA-graphed decode steps, captured during the warm-up call. "weights GB/s" is
the weight bytes read per decode step times steps per second (batch 1 is bound by it: compare with
the GPU's memory bandwidth, --bandwidth-gbs, for the roofline fraction).

    python bench/sampler.py                                   # embedded SmolLM2-135M, CPU, fp32
    python bench/sampler.py --model data/configs/qwen2.5-0.5b.json --device cuda --dtype bfloat16 \
        --batch-sizes 1,64 --new-tokens 512 --bandwidth-gbs 4800

--model is "smollm2-135m", an HF checkpoint directory, or a config.json (random weights of that shape).
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402

TEST_MODEL = "smollm2-135m"  # the embedded model whose GGUF is one file transformers reads directly


def reference_model(name, dtype):
    """transformers' model for --model: the embedded GGUF through transformers' own GGUF reader, a
    checkpoint directory, or random weights for a config.json."""
    if name == TEST_MODEL:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
        try:
            path = M.embedded_gguf(name)
        except FileNotFoundError as error:
            sys.exit(f"bench/sampler.py: {error}")
        directory, gguf_file = os.path.split(path)
        config = transformers.AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=hf)
        hf.load_state_dict(tensors["tensors"], strict=False)  # lm_head is tied to the embedding
        return hf
    if name.endswith(".json"):
        with open(name) as f:
            raw = json.load(f)
        torch.manual_seed(0)
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**raw), dtype=dtype)
    return transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype)


def our_model(hf):
    """Our Transformer with exactly the reference's weights (shared loader, HF tensor names)."""
    config = M.ModelConfig.from_hf(hf.config.to_dict())
    state = hf.state_dict()
    return M._build(config, state.get, "model.layers.", "model.embed_tokens.weight", "model.norm.weight",
                    "lm_head.weight")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_cache(model, prompts, new_tokens, device):
    """The KV cache a run would keep for batches like `prompts` (see azr.sampler_cache)."""
    capacity = max(len(p) for p in prompts) + new_tokens
    dtype = next(model.parameters()).dtype
    if device.type == "cuda":
        return M.KVCache(model.config, len(prompts), capacity, dtype, device, row_bucket=8, length_bucket=256,
                         cuda_graphs=True)
    return M.KVCache(model.config, len(prompts), capacity, dtype, device)


def time_ours(model, prompts, new_tokens, device, cache):
    sync(device)
    start = time.perf_counter()
    out = M.generate(model, prompts, new_tokens, temperature=1.0, top_p=1.0, seed=0, cache=cache)
    sync(device)
    assert all(len(s[0].tokens) == new_tokens for s in out)
    return time.perf_counter() - start


def time_transformers(hf, prompts, new_tokens, device):
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    sync(device)
    start = time.perf_counter()
    out = hf.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    sync(device)
    assert out.shape[1] == width + new_tokens
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TEST_MODEL,
                        help=f"{TEST_MODEL}, an HF checkpoint directory or a config.json (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="time each run this many times, keep the fastest")
    parser.add_argument("--bandwidth-gbs", type=float, default=0.0, help="memory bandwidth, for the roofline column")
    args = parser.parse_args()
    if args.model != TEST_MODEL and not os.path.exists(args.model):
        sys.exit(f"--model {args.model!r}: no such file or directory")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    hf = reference_model(args.model, dtype).to(device).eval()
    ours = our_model(hf)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    generator = torch.Generator().manual_seed(0)
    vocab = hf.config.vocab_size
    prompts = [torch.randint(0, vocab, (int(n),), generator=generator).tolist()
               for n in torch.randint(64, 257, (max(batch_sizes),), generator=generator)]
    time_transformers(hf, prompts[:2], 4, device)  # warm-up: allocator, kernels, lazy init
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.model}, {args.dtype}, {name}, {args.new_tokens} new tokens, prompts 64-256 tokens\n")
    print("| batch | model.generate tok/s | transformers generate tok/s | speedup | weights GB/s | roofline |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in batch_sizes:
        tokens = batch * args.new_tokens
        cache = run_cache(ours, prompts[:batch], args.new_tokens, device)
        time_ours(ours, prompts[:batch], args.new_tokens, device, cache)  # warm-up; captures the CUDA graphs
        ours_s = float("inf")
        hf_s = float("inf")
        for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
            ours_s = min(ours_s, time_ours(ours, prompts[:batch], args.new_tokens, device, cache))
            hf_s = min(hf_s, time_transformers(hf, prompts[:batch], args.new_tokens, device))
        bandwidth = weight_bytes * args.new_tokens / ours_s / 1e9
        roofline = f"{100 * bandwidth / args.bandwidth_gbs:.0f}%" if args.bandwidth_gbs else "-"
        print(f"| {batch} | {tokens / ours_s:.1f} | {tokens / hf_s:.1f} | {hf_s / ours_s:.2f}x | {bandwidth:.1f} "
              f"| {roofline} |", flush=True)
        del cache


if __name__ == "__main__":
    main()
