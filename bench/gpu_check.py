"""The GPU check's Python steps: azr's CUDA-only paths run once, each printing its figures as lines of
text (bench/gpu_check.sh runs them in order of risk and collects the lines into one file).

    decode    greedy decode in a CUDA-graph cache against the same eager decode, on random-weight
              Qwen2.5-0.5B and Qwen3-0.6B (data/configs): prompts of mixed lengths, stop tokens that end
              rows at different steps (compaction, padded row buckets), several length buckets; then
              the same at T = 1 with a fixed seed
    refresh   the sampler copy's weights changed in place after the graphs were captured: the graphs
              decode with the new weights (as eager decoding does), not the old ones
    train     one forward/backward of the update's log-probs over a full-length sequence (6144 prompt
              + 8096 response tokens) under bf16 autocast against fp32: log-prob and gradient agreement,
              peak memory against bench/memory.py's estimate
    budget    the KV cache budget (azr.kv_cache_budget) against the memory measured free after one
              AdamW step, and the old reading (half of what was free before the sampler copy)
    speed     decode tokens/s, graph against eager, at 1/8/64 rows and 256/8192 tokens of context, and
              the split-key attention against the memory-efficient kernel at 1 and 8 rows
    checkpoint DIR   write a tiny random Qwen2 checkpoint with a byte-level tokenizer (for azr.py runs)
    metrics RUN...   what azr.py runs wrote: steps logged, tokens/s, times, the checkpoint's step

`all` runs decode, refresh, train, budget and speed; one that fails prints its error and the next runs.
`--device cpu --tiny` runs the same code on tiny configs on a CPU, without CUDA graphs or device memory
figures (the test suite does, so the script is known to run before a GPU sees it).

    python bench/gpu_check.py all --device cuda
    python bench/gpu_check.py all --device cpu --tiny
"""
import argparse
import dataclasses
import json
import os
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "bench"))  # after the root: bench/executor.py must not hide executor.py
import azr  # noqa: E402
import memory  # noqa: E402  bench/memory.py: the activation estimate
import model as M  # noqa: E402
from model import KVCache  # noqa: E402

GIB = 2 ** 30
DECODE_CONFIGS = ("qwen2.5-0.5b", "qwen3-0.6b")
ROW_BUCKET = 8  # azr.sampler_cache's buckets
LENGTH_BUCKET = 256


def say(text):
    print(text, flush=True)


def load_config(name, tiny):
    """ModelConfig of data/configs/<name>.json; `tiny` keeps the family (bias, q/k norm) at toy sizes."""
    with open(os.path.join(ROOT, "data", "configs", f"{name}.json")) as f:
        config = M.ModelConfig.from_hf(json.load(f))
    if tiny:
        config = dataclasses.replace(config, vocab_size=257, hidden_size=64, intermediate_size=128, num_layers=2,
                                     num_heads=4, num_kv_heads=2, head_dim=16)
    return config


def random_model(config, device, seed=0):
    """An fp32 Transformer with random weights, built on `device`. Every matrix has unit gain and the
    norms are far from 1, so the logits depend on the context and greedy decoding wanders over the
    vocabulary (torch's default init gives a model that repeats one token)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = M.Transformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            else:
                param.normal_(0, param.shape[-1] ** -0.5)
    return model.eval()


def random_prompts(count, shortest, longest, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def bucketed_cache(sampler, rows, capacity, graphs):
    """The cache a run decodes in (azr.sampler_cache's buckets, the sampler copy's dtype), with or
    without CUDA graphs."""
    weight = sampler.embed.weight
    return KVCache(sampler.config, rows, capacity, weight.dtype, weight.device, row_bucket=ROW_BUCKET,
                   length_bucket=LENGTH_BUCKET, cuda_graphs=graphs)


def count_compactions(cache):
    """Wrap cache.keep_rows to count its calls in cache.compactions."""
    cache.compactions = 0
    keep_rows = cache.keep_rows

    def counted(keep, used):
        cache.compactions += 1
        keep_rows(keep, used)

    cache.keep_rows = counted


def staggered_stops(rows, horizon):
    """Stop tokens that end the rows of an unstopped decode at spread-out steps before `horizon`: row i's
    token at step (i + 1) * horizon / (rows + 1) (a row stops at the first stop token it meets, so at
    that step or earlier)."""
    stops = set()
    for index, row in enumerate(rows):
        stops.add(row[(index + 1) * horizon // (len(rows) + 1)])
    return sorted(stops)


def same_rows(a, b):
    """How many rows of two generate results (lists per prompt of Samples) hold the same tokens."""
    pairs = [(x.tokens, y.tokens) for group_a, group_b in zip(a, b) for x, y in zip(group_a, group_b)]
    return sum(x == y for x, y in pairs), len(pairs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- decode
def check_decode(args, device):
    prompt_range = (4, 60) if args.tiny else (40, 1500)  # several length buckets: 256 ... 2048
    new_tokens = 40 if args.tiny else 600
    for name in DECODE_CONFIGS:
        config = load_config(name, args.tiny)
        sampler = azr.sampler_model(random_model(config, device), device)
        prompts = random_prompts(24, *prompt_range, config.vocab_size)
        capacity = max(len(p) for p in prompts) + new_tokens
        graphs = device.type == "cuda"
        eager = bucketed_cache(sampler, 2 * len(prompts), capacity, graphs=False)
        for label, temperature, n in (("greedy", 0.0, 1), ("T=1 seed 0", 1.0, 2)):
            unstopped = M.generate(sampler, prompts, new_tokens, temperature=temperature, n=n, seed=0, cache=eager)
            stops = staggered_stops([sample.tokens for group in unstopped for sample in group], new_tokens * 3 // 4)
            graph_cache = bucketed_cache(sampler, 2 * len(prompts), capacity, graphs=graphs)
            count_compactions(graph_cache)
            reserved = torch.cuda.memory_reserved(device) if graphs else 0
            sync(device)
            start = time.perf_counter()
            with_graphs = M.generate(sampler, prompts, new_tokens, temperature=temperature, stop_ids=stops, n=n,
                                     seed=0, cache=graph_cache)
            sync(device)
            seconds = time.perf_counter() - start
            graph_memory = (torch.cuda.memory_reserved(device) - reserved) / GIB if graphs else 0.0
            without = M.generate(sampler, prompts, new_tokens, temperature=temperature, stop_ids=stops, n=n, seed=0,
                                 cache=eager)
            exact = M.generate(sampler, prompts, new_tokens, temperature=temperature, stop_ids=stops, n=n, seed=0,
                               cache=KVCache(config, 2 * len(prompts), capacity, eager.k[0].dtype, device))
            equal, rows = same_rows(with_graphs, without)
            equal_exact, _ = same_rows(with_graphs, exact)
            lengths = sorted({len(s.tokens) for group in with_graphs for s in group})
            say(f"decode {name} {label}: graph == eager (same buckets) {equal}/{rows} rows "
                f"{'PASS' if equal == rows else 'FAIL'}; == exact shapes {equal_exact}/{rows}; "
                f"{len(graph_cache.graphs)} graphs, row buckets {sorted({k[0] for k in graph_cache.graphs})}, "
                f"length buckets {sorted({k[1] for k in graph_cache.graphs})}; {graph_cache.compactions} compactions; "
                f"response lengths {lengths[0]}..{lengths[-1]} ({len(lengths)} distinct); "
                f"{seconds:.1f} s with captures; graph memory {graph_memory:.2f} GiB")


# ----------------------------------------------------------------------------- refresh
def check_refresh(args, device):
    config = load_config(DECODE_CONFIGS[0], args.tiny)
    model = random_model(config, device)
    sampler = azr.sampler_model(model, device)
    prompts = random_prompts(8, *((4, 30) if args.tiny else (40, 600)), config.vocab_size)
    new_tokens = 32 if args.tiny else 128
    capacity = max(len(p) for p in prompts) + new_tokens
    graph_cache = bucketed_cache(sampler, len(prompts), capacity, graphs=device.type == "cuda")
    before = M.generate(sampler, prompts, new_tokens, temperature=0, cache=graph_cache)  # captures the graphs
    captured = len(graph_cache.graphs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * param.std())
    azr.refresh_sampler_model(sampler, model)
    after = M.generate(sampler, prompts, new_tokens, temperature=0, cache=graph_cache)
    eager = M.generate(sampler, prompts, new_tokens, temperature=0,
                       cache=bucketed_cache(sampler, len(prompts), capacity, graphs=False))
    equal, rows = same_rows(after, eager)
    changed = rows - same_rows(after, before)[0]
    verdict = "PASS" if equal == rows and changed > 0 else "FAIL"
    say(f"refresh: after refreshing the weights, graph == eager {equal}/{rows} rows, {changed}/{rows} rows differ "
        f"from before the refresh {verdict}; graphs captured before {captured}, replayed after "
        f"(new captures {len(graph_cache.graphs) - captured})")


# ----------------------------------------------------------------------------- train
def check_train(args, device):
    config = load_config(DECODE_CONFIGS[0], args.tiny)
    model = random_model(config, device)
    model.activation_checkpointing = True
    model.train()
    prompt_tokens, response_tokens = (40, 60) if args.tiny else (6144, 8096)
    tokens = torch.randint(0, config.vocab_size, (1, prompt_tokens + response_tokens), device=device)
    mask = torch.zeros(1, prompt_tokens + response_tokens - 1, device=device)
    mask[:, prompt_tokens - 1:] = 1
    results = {}
    for label, autocast in (("fp32", False), ("bf16 autocast", True)):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logprobs = model.token_logprobs(tokens, mask).float()
            loss = -(logprobs * mask).sum() / mask.sum()
        loss.backward()
        sync(device)
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated(device) - baseline) / GIB if device.type == "cuda" else float("nan")
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
        results[label] = (logprobs.detach()[mask.bool()], grads, peak, seconds)
    (lp32, g32, peak32, s32), (lp16, g16, peak16, s16) = results.values()
    cosine = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    difference = (lp32 - lp16).abs()
    total = sum(p.numel() for p in model.parameters())
    # bench/memory.py's update term for DDP on one sequence: fp32 gradients 4P, autocast's bf16 weight
    # copies 2P, the activations of one micro-batch of SEQUENCE_TOKENS (this sequence's length)
    estimate = (6 * total + memory.activation_bytes(config, 1, 4)) / GIB
    verdict = "PASS" if cosine > 0.99 and difference.max().item() < 0.5 else "FAIL"
    say(f"train {DECODE_CONFIGS[0]}, {prompt_tokens}+{response_tokens} tokens, activation checkpointing: "
        f"log-probs bf16 vs fp32 max |diff| {difference.max().item():.4f}, mean {difference.mean().item():.5f}; "
        f"gradient cosine {cosine:.5f}, norm ratio {(g16.norm() / g32.norm()).item():.4f} {verdict}")
    say(f"train memory above the weights: fp32 {peak32:.2f} GiB, bf16 autocast {peak16:.2f} GiB; "
        f"bench/memory.py's DDP update estimate {estimate:.2f} GiB; time fp32 {s32:.2f} s, bf16 {s16:.2f} s")


# ----------------------------------------------------------------------------- budget
def check_budget(args, device):
    name = "qwen2.5-coder-1.5b"
    config = load_config(name, args.tiny)
    model = random_model(config, device)
    model.train()
    module = azr.TokenLogprobs(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    cfg = azr.Config()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        free_before_copy = torch.cuda.mem_get_info(device)[0]
    sampler = azr.sampler_model(model, device)
    pending = azr.pending_update_bytes(module, optimizer)
    if on_gpu:
        budget = azr.kv_cache_budget(cfg, device, pending)
        predicted_free = torch.cuda.mem_get_info(device)[0] - pending
    tokens = torch.randint(0, config.vocab_size, (2, 512), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
        loss = -module(tokens).float().mean()
    loss.backward()
    optimizer.step()
    say(f"budget {name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, sampler copy "
        f"{sum(p.numel() * p.element_size() for p in sampler.parameters()) / GIB:.2f} GiB, pending before the "
        f"first update {pending / GIB:.2f} GiB (AdamW moments + gradients), after it "
        f"{azr.pending_update_bytes(module, optimizer) / GIB:.2f} GiB with the gradients still held")
    if not on_gpu:
        say("budget: no device memory on a CPU; the figures above are the pending bytes only")
        return
    torch.cuda.empty_cache()
    measured_free = torch.cuda.mem_get_info(device)[0]
    row_bytes = (cfg.max_prompt_tokens + cfg.max_response_tokens) * KVCache.bytes_per_token(config, torch.bfloat16)
    error = (predicted_free - measured_free) / GIB
    verdict = "PASS" if abs(error) < 1.0 else "FAIL"
    say(f"budget: free after one AdamW step (gradients held) measured {measured_free / GIB:.2f} GiB, predicted "
        f"before it {predicted_free / GIB:.2f} GiB, error {error:+.2f} GiB {verdict}; default cache "
        f"{budget / GIB:.2f} GiB = {int(budget // row_bytes)} rows of {cfg.max_prompt_tokens + cfg.max_response_tokens} "
        f"tokens; the old reading (half of the free memory before the sampler copy) {0.5 * free_before_copy / GIB:.2f} GiB")


# ----------------------------------------------------------------------------- speed
def decode_seconds_per_step(sampler, prompts, cache, steps, device):
    """Seconds per decode step: generate with steps + 1 new tokens minus generate with 1 (same prefill)."""
    M.generate(sampler, prompts, steps + 1, temperature=1.0, seed=0, cache=cache)  # warm-up, captures graphs
    times = []
    for new_tokens in (1, steps + 1):
        sync(device)
        start = time.perf_counter()
        M.generate(sampler, prompts, new_tokens, temperature=1.0, seed=0, cache=cache)
        sync(device)
        times.append(time.perf_counter() - start)
    return max(1e-9, times[1] - times[0]) / steps


def check_speed(args, device):
    config = load_config(DECODE_CONFIGS[0], args.tiny)
    sampler = azr.sampler_model(random_model(config, device), device)
    steps = 16 if args.tiny else 64
    contexts = (16, 64) if args.tiny else (256, 8192)
    graphs = device.type == "cuda"
    say(f"speed {DECODE_CONFIGS[0]} ({'bf16, CUDA graphs' if graphs else 'CPU, eager'}), {steps} decode steps:")
    say("| context | rows | graph tok/s | eager tok/s | graph speedup | split-key attention off, tok/s |")
    say("|---:|---:|---:|---:|---:|---:|")
    for context in contexts:
        for rows in (1, 8, 64):
            prompts = random_prompts(rows, context, context, config.vocab_size, seed=rows)
            capacity = context + steps + 1
            graph_step = decode_seconds_per_step(sampler, prompts, bucketed_cache(sampler, rows, capacity, graphs),
                                                 steps, device)
            eager_step = decode_seconds_per_step(sampler, prompts, bucketed_cache(sampler, rows, capacity, False),
                                                 steps, device)
            unsplit = "-"
            if rows < 64 and context == contexts[-1]:
                split_blocks = M.SPLIT_KEYS_MAX_BLOCKS
                M.SPLIT_KEYS_MAX_BLOCKS = 0
                try:
                    cache = bucketed_cache(sampler, rows, capacity, graphs)
                    unsplit = f"{rows / decode_seconds_per_step(sampler, prompts, cache, steps, device):.0f}"
                finally:
                    M.SPLIT_KEYS_MAX_BLOCKS = split_blocks
            say(f"| {context} | {rows} | {rows / graph_step:.0f} | {rows / eager_step:.0f} | "
                f"{eager_step / graph_step:.2f}x | {unsplit} |")


# ----------------------------------------------------------------------------- azr.py runs
def write_checkpoint(path):
    """A tiny random Qwen2 HF checkpoint whose tokenizer is byte-level (every text encodes) plus
    <|endoftext|> as its stop token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    config = load_config("qwen2.5-0.5b", tiny=True)
    model = random_model(dataclasses.replace(config, vocab_size=len(tokenizer)), "cpu")
    M.save_hf_checkpoint(model, tokenizer, path)
    say(f"checkpoint: tiny random Qwen2 ({sum(p.numel() for p in model.parameters())} parameters, vocabulary "
        f"{len(tokenizer)}) in {path}")


def report_runs(run_dirs):
    """Per run directory: the steps metrics.jsonl holds, each step's tokens/s and times, the checkpoint's step."""
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.isfile(path):
            say(f"run {run_dir}: no metrics.jsonl FAIL")
            continue
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        state = os.path.join(run_dir, "checkpoint", "state.pt")
        checkpoint_step = torch.load(state, weights_only=False)["step"] if os.path.isfile(state) else None
        say(f"run {os.path.basename(run_dir)}: steps {[row['step'] for row in rows]}, checkpoint at step "
            f"{checkpoint_step}")
        for row in rows:
            say(f"  step {row['step']}: {row['tokens_per_s']:.0f} tok/s, sampling {row['time/sampling']:.1f} s, "
                f"execution {row['time/execution']:.1f} s, update {row['time/update']:.1f} s, "
                f"grad norm {row['grad_norm']:.3g}")


CHECKS = {"decode": check_decode, "refresh": check_refresh, "train": check_train, "budget": check_budget,
          "speed": check_speed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="steps: " + ", ".join(list(CHECKS) + ["all", "checkpoint", "metrics"]))
    parser.add_argument("step", help="decode, refresh, train, budget, speed, all, checkpoint DIR or metrics RUN...")
    parser.add_argument("paths", nargs="*", help="checkpoint: the directory to write; metrics: run directories")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same families (CPU dry runs)")
    args = parser.parse_args()
    if args.step == "checkpoint":
        if len(args.paths) != 1:
            sys.exit("bench/gpu_check.py checkpoint DIR: one directory")
        return write_checkpoint(args.paths[0])
    if args.step == "metrics":
        return report_runs(args.paths)
    if args.step != "all" and args.step not in CHECKS:
        sys.exit(f"bench/gpu_check.py: unknown step {args.step!r}: {', '.join(CHECKS)}, all, checkpoint, metrics")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py: --device cuda but CUDA is not available (--device cpu --tiny for a dry run)")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        say(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{torch.cuda.get_device_properties(device).multi_processor_count} SMs")
    failed = []
    for name, check in CHECKS.items():
        if args.step not in ("all", name):
            continue
        start = time.perf_counter()
        try:
            check(args, device)
        except Exception:  # one failing check must not hide the figures of the others
            failed.append(name)
            say(f"{name}: ERROR\n" + traceback.format_exc(limit=8))
        say(f"({name}: {time.perf_counter() - start:.1f} s)")
    if failed:
        sys.exit(f"bench/gpu_check.py: {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
