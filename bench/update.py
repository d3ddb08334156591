"""The update's forward and backward with shared prompt prefixes against the plain forward, on rollouts
shaped like a CPU step's.

Per task type: --proposers proposer rollouts whose prompts (--proposer-prompt tokens) share their first
--proposer-prefix tokens (the instructions and worked example; measured on the CPU run's prompts:
deduction 284 of ~484, abduction 336 of ~479, induction 52 of ~329), and --tasks solver tasks with
--solver-group rollouts each, sharing the task's whole prompt (--solver-prompt tokens). Responses are
uniform in [--response / 2, 3 * --response / 2]. Tokens are random ids: only the shapes matter.

Both modes run azr's own functions on the same rollouts, one mini-batch: micro_batches, old_logprobs
(pi_old, no grad) and accumulate_gradients (forward and backward of the clipped surrogate). "plain"
lets no group pay for its prefix (model.SHARED_PREFIX_GROUP_COST set past any saving), which is the
update before shared prefixes. The table shows medians over --repeats, the tokens each mode runs
forward (prefixes once, every row's own tokens, padding included) and the speedup.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/update.py --model smollm2-135m --threads 1

Memory: SmolLM2-135M at micro-batch size 2 holds 3.9 GB (fp32 weights and gradients, one micro-batch's
activations, a chunk of logits).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import azr  # noqa: E402
import model as M  # noqa: E402
from tasks import TASKS  # noqa: E402
from trr import trr_advantages  # noqa: E402

TASK_TYPES = tuple(TASKS)


def int_per_type(text):
    """"284,336,52" -> {task type: int}."""
    values = [int(v) for v in text.split(",")]
    if len(values) != len(TASK_TYPES):
        raise argparse.ArgumentTypeError(f"needs {len(TASK_TYPES)} comma-separated integers, one per task type")
    return dict(zip(TASK_TYPES, values))


def make_rollouts(args, vocab_size):
    generator = torch.Generator().manual_seed(0)

    def tokens(count):
        return torch.randint(0, vocab_size, (count,), generator=generator).tolist()

    def response():
        return tokens(int(torch.randint(args.response // 2, 3 * args.response // 2 + 1, (1,), generator=generator)))

    def reward():
        return float(len(rollouts) % 3) - 1.0  # every group's rewards differ: no advantage is 0

    rollouts = []
    for task_type in TASK_TYPES:
        instructions = tokens(args.proposer_prefix[task_type])
        for _ in range(args.proposers):
            prompt = instructions + tokens(args.proposer_prompt[task_type] - len(instructions))
            rollouts.append(azr.Rollout(task_type, "propose", prompt, response(), "", reward()))
        for _ in range(args.tasks):
            prompt = tokens(args.solver_prompt)
            for _ in range(args.solver_group):
                rollouts.append(azr.Rollout(task_type, "solve", prompt, response(), "", reward()))
    return rollouts


def run_update(model, rollouts, cfg):
    """-> (tokens run forward, seconds of pi_old, seconds of forward + backward) of one mini-batch."""
    module = azr.TokenLogprobs(model)
    device = torch.device("cpu")
    advantages = trr_advantages([r.reward for r in rollouts], [r.group for r in rollouts])
    num_tokens = sum(len(r.response_tokens) for r in rollouts)
    batches = azr.micro_batches(rollouts, range(len(rollouts)), cfg, module)
    tokens = sum(azr.micro_batch_tokens(rollouts, prefix, rows) for prefix, rows in batches if rows)
    start = time.perf_counter()
    old = azr.old_logprobs(module, rollouts, batches, cfg, device)
    old_seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    azr.accumulate_gradients(module, rollouts, batches, advantages, old, num_tokens, 1, cfg, device)
    return tokens, old_seconds, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="an embedded model's name or an HF checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode; the table shows medians")
    parser.add_argument("--micro-batch-size", type=int, default=azr.CPU_PRESET["micro_batch_size"],
                        help="default: the CPU preset's")
    parser.add_argument("--entropy-coef", type=float, default=0.0, help="the CPU preset's")
    parser.add_argument("--proposers", type=int, default=4, help="proposer rollouts per task type")
    parser.add_argument("--proposer-prompt", type=int_per_type, default=int_per_type("484,479,329"))
    parser.add_argument("--proposer-prefix", type=int_per_type, default=int_per_type("284,336,52"))
    parser.add_argument("--tasks", type=int, default=2, help="solver tasks per task type")
    parser.add_argument("--solver-group", type=int, default=4, help="solver rollouts per task")
    parser.add_argument("--solver-prompt", type=int, default=200)
    parser.add_argument("--response", type=int, default=100, help="mean response tokens")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = M.load_model(args.model)
    model.train()
    rollouts = make_rollouts(args, model.config.vocab_size)
    cfg = azr.Config(micro_batch_size=args.micro_batch_size, entropy_coef=args.entropy_coef)
    shared_cost = M.SHARED_PREFIX_GROUP_COST
    results = {"plain": [], "shared": []}
    for _ in range(args.repeats):
        for mode in results:
            M.SHARED_PREFIX_GROUP_COST = 10 ** 9 if mode == "plain" else shared_cost
            results[mode].append(run_update(model, rollouts, cfg))
    M.SHARED_PREFIX_GROUP_COST = shared_cost

    sequence_tokens = sum(len(r.prompt_tokens) + len(r.response_tokens) for r in rollouts)
    print(f"{len(rollouts)} rollouts, {sequence_tokens} prompt+response tokens, micro-batch size "
          f"{args.micro_batch_size}, {torch.get_num_threads()} thread(s), {args.repeats} run(s) per mode")
    print("| mode | tokens run | pi_old (s) | forward + backward (s) |")
    print("|---|---:|---:|---:|")
    medians = {}
    for mode, runs in results.items():
        medians[mode] = [statistics.median(run[k] for run in runs) for k in range(3)]
        tokens, old_seconds, update_seconds = medians[mode]
        print(f"| {mode} | {int(tokens)} | {old_seconds:.1f} | {update_seconds:.1f} |")
    plain = medians["plain"]
    shared = medians["shared"]
    print(f"speedup: pi_old {plain[1] / max(1e-9, shared[1]):.2f}x, "
          f"forward + backward {plain[2] / max(1e-9, shared[2]):.2f}x, tokens {plain[0] / max(1, shared[0]):.2f}x")


if __name__ == "__main__":
    main()
