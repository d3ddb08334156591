"""Per-GPU memory of AZR training, worked out from parameter counts, per model, strategy and GPU count.

For each config given (default: the published configs in the repository's data/configs), builds the
model on the meta device to count parameters exactly, then prints a markdown table. P = parameters,
N = GPUs:

  static (resident all run):  fp32 master weights 4P and AdamW's two fp32 moments 8P, the moments
                              divided by N with --zero, everything divided by N with --fsdp;
                              plus the sampler's bf16 weight copy 2P (never sharded);
  update (on top of static):  fp32 gradients 4P (DDP keeps them in its buckets; /N with --fsdp),
                              DDP: autocast's bf16 weight copies 2P; FSDP: the root unit (embedding,
                              lm_head) and two blocks gathered in bf16 plus one block's unsharded
                              gradients (bf16 and the fp32 reduction);
                              activations of one micro-batch of full-length sequences (prompt 6144 +
                              response 8096 tokens, the GPU preset) under activation checkpointing:
                              every block's input, one block's recomputed internals and their
                              gradients, and one 2048-target chunk of fp32 logits with its gradient.

The KV cache is allocated once per run and stays through the update, so what is left for it is the
usable memory (79 GiB of an 80 GB GPU, 139 GiB of a 141 GB one) minus static minus update; a rollout
of the full lengths takes (prompt + response) * 2 * layers * kv_heads * head_dim * 2 bytes of it.
Gradients and activations are freed before sampling, so while sampling the cache could have more:
the "while sampling" column is usable minus static. Figures are estimates, not measurements.

    python bench/memory.py [--micro-batch-size 4] [--gpus 2,8] [CONFIG.json ...]
"""
import argparse
import glob
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import KVCache, ModelConfig, Transformer  # noqa: E402

GIB = 1024 ** 3
SEQUENCE_TOKENS = 6144 + 8096
LOGPROB_CHUNK = 2048  # model.token_logprobs' chunk_size
USABLE_GIB = {"80 GB": 79, "141 GB": 139}


def parameter_counts(config):
    """-> (all parameters, parameters of one block, parameters outside the blocks)."""
    with torch.device("meta"):
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    return total, block, total - config.num_layers * block


def activation_bytes(config, micro_batch, residual_bytes):
    """Peak activations of one micro-batch's backward with activation checkpointing (bf16 compute)."""
    tokens = micro_batch * SEQUENCE_TOKENS
    checkpoints = tokens * config.hidden_size * residual_bytes * config.num_layers
    qkv = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
    # per token in one recomputed block: 2 norms, qkv, rotated q/k, attention out, projection, gate_up,
    # silu, product, down; x2 for their gradients
    block = tokens * 2 * 2 * (6 * config.hidden_size + 2 * qkv + 4 * config.intermediate_size)
    logits = 3 * LOGPROB_CHUNK * config.vocab_size * 4  # fp32 logits, their softmax and gradient
    return checkpoints + block + logits


def rows(config, micro_batch, gpu_counts):
    """Yields (strategy, GPUs, static bytes, sampler copy bytes, update bytes)."""
    total, block, root = parameter_counts(config)
    sampler = 2 * total
    ddp_update = 4 * total + 2 * total + activation_bytes(config, micro_batch, 4)
    yield "DDP", "any", 12 * total + sampler, sampler, ddp_update
    for gpus in gpu_counts:
        yield "DDP + --zero", str(gpus), 4 * total + 8 * total / gpus + sampler, sampler, ddp_update
    for gpus in gpu_counts:
        gathered = 2 * root + 2 * 2 * block + (2 + 4) * block
        update = 4 * total / gpus + gathered + activation_bytes(config, micro_batch, 2)
        yield "--fsdp", str(gpus), 12 * total / gpus + sampler, sampler, update


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward")
    parser.add_argument("--gpus", default="2,8", help="GPU counts for the sharded strategies")
    args = parser.parse_args()
    paths = args.configs
    if not paths:
        configs_dir = os.path.join(os.path.dirname(__file__), "..", "data", "configs")
        paths = sorted(glob.glob(os.path.join(configs_dir, "*.json")))
    if not paths:
        sys.exit("no configs: pass CONFIG.json paths")
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    print(f"micro-batch {args.micro_batch_size} x {SEQUENCE_TOKENS} tokens; GiB per GPU; KV cache cells: GiB "
          "(full-length rollouts)\n")
    print("| model | params | KV / rollout | strategy | GPUs | static | of which sampler copy | update "
          "| KV cache, 80 GB | KV cache, 141 GB | KV while sampling, 80 GB |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        with open(path) as f:
            config = ModelConfig.from_hf(json.load(f))
        name = os.path.splitext(os.path.basename(path))[0]
        total = parameter_counts(config)[0]
        rollout = SEQUENCE_TOKENS * KVCache.bytes_per_token(config, torch.bfloat16)
        for strategy, gpus, static, sampler, update in rows(config, args.micro_batch_size, gpu_counts):
            cells = []
            for usable in USABLE_GIB.values():
                cells.append(kv_cell(usable * GIB - static - update, rollout))
            cells.append(kv_cell(USABLE_GIB["80 GB"] * GIB - static, rollout))
            print(f"| {name} | {total / 1e9:.2f} B | {rollout / GIB:.2f} GiB | {strategy} | {gpus} | {static / GIB:.1f} "
                  f"| {sampler / GIB:.1f} | {update / GIB:.1f} | " + " | ".join(cells) + " |")


def kv_cell(left, rollout):
    if left < rollout:
        return "does not fit"
    return f"{left / GIB:.1f} ({int(left // rollout)})"

if __name__ == "__main__":
    main()
