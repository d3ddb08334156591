"""Per-GPU memory of AZR training, worked out from parameter and optimizer-state bytes.

For each published config in ../shared/data/configs (or the paths given), builds the model on the
meta device to count parameters exactly, then prints a markdown table of the static memory per GPU:

  fp32 master weights 4P + fp32 gradients 4P + AdamW moments 8P (divided by the GPU count with --zero)
  + bf16 weight copies made by autocast 2P,

and the bf16 KV cache one rollout needs (prompt 6144 + response 8096 tokens, the GPU preset).
Activations are extra and small with activation checkpointing and chunked log-probs.

    python bench/memory.py [CONFIG.json ...]
"""
import glob
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import ModelConfig, Transformer  # noqa: E402

GIB = 1024 ** 3
SEQUENCE_TOKENS = 6144 + 8096


def main(paths):
    paths = paths or sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "configs", "*.json")))
    print("| model | params | per GPU, no --zero | --zero, 2 GPUs | --zero, 4 GPUs | --zero, 8 GPUs "
          "| KV cache / rollout |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            config = ModelConfig.from_hf(json.load(f))
        with torch.device("meta"):
            params = sum(p.numel() for p in Transformer(config).parameters())
        replicated = (4 + 4 + 2) * params  # weights, gradients, bf16 copies: on every GPU
        adam = 8 * params
        kv = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 2 * SEQUENCE_TOKENS
        name = os.path.splitext(os.path.basename(path))[0]
        sharded = " | ".join(f"{(replicated + adam / gpus) / GIB:.1f} GiB" for gpus in (2, 4, 8))
        print(f"| {name} | {params / 1e9:.2f} B | {(replicated + adam) / GIB:.1f} GiB | {sharded} | "
              f"{kv / GIB:.2f} GiB |")


if __name__ == "__main__":
    main(sys.argv[1:])
