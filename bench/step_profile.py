"""Where one self-play step's time goes, against this machine's measured limits.

Runs the CPU configuration for --steps steps from fixed seed buffers (--seed-from, default the committed
run docs/cpu-run, so the work is the same run to run) and prints one table: per phase (propose,
learnability, solve; prefill and decode separately; execution; the update's forward, backward and
optimizer; the sampler refresh) the seconds, tokens and the fraction of the machine's limit. The limits
are measured first, in the same process: a large fp32 matmul for FLOP/s and a large tensor copy for
memory bandwidth. Prefill and the update are FLOP-bound (2 or 6 x non-embedding parameters x tokens);
decode steps read every weight once (bytes of the decoding model's weights per step).

The timings come from wrapping the loop's own functions (azr.propose, model._decode_logits, ...), so
the same bench profiles an older tree: --code DIR imports azr/model from DIR. With --baseline DIR every
repeat runs the old tree and this one, alternating in subprocesses, and the table shows both medians and
the speedup. --set KEY=VALUE overrides a Config field (e.g. the old preset's values, for the same work).

    python bench/step_profile.py [--steps 1] [--repeats 3] [--baseline /tmp/old] [--set batch_size=3 ...]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- machine limits
def measure_limits(seconds=2.0):
    """-> {"fp32_gflops", "bf16_gflops", "copy_gbs"} of this process's threads."""
    import torch

    def rate(fn, work):
        fn()
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            count += 1
        return work * count / (time.perf_counter() - start)

    limits = {}
    # bf16 at 512: a CPU without native bf16 emulates it at well under 1 GFLOP/s
    for name, dtype, size in (("fp32_gflops", torch.float32, 2048), ("bf16_gflops", torch.bfloat16, 512)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        limits[name] = rate(lambda: a @ b, 2 * size ** 3) / 1e9
    source = torch.empty(64 * 2 ** 20)  # 256 MiB, far past any cache
    target = torch.empty_like(source)
    limits["copy_gbs"] = rate(lambda: target.copy_(source), 2 * source.numel() * 4) / 1e9  # read + write
    return limits


# ----------------------------------------------------------------------------- instrumentation
class Profile:
    """Seconds and tokens per row of the table, filled by the wrappers below."""

    def __init__(self):
        self.seconds = {}
        self.tokens = {}
        self.calls = {}
        self.phase = "seed"

    def add(self, row, seconds, tokens=0):
        self.seconds[row] = self.seconds.get(row, 0.0) + seconds
        self.tokens[row] = self.tokens.get(row, 0) + tokens
        self.calls[row] = self.calls.get(row, 0) + 1


def timed(profile, owner, name, row_of):
    """Replace owner.name by a wrapper that adds its wall time (and tokens) to row_of(args, kwargs, result)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        row, tokens = row_of(args, kwargs, result)
        if row:
            profile.add(row, time.perf_counter() - start, tokens)
        return result

    setattr(owner, name, wrapper)


def instrument(profile, azr, model_module):
    """Wrap the loop's functions. Every name used here exists in b61608d's tree too."""
    for phase, function in (("propose", "propose"), ("learnability", "estimate_learnability"), ("solve", "solve")):
        original = getattr(azr, function)

        def entered(*args, _original=original, _phase=phase, **kwargs):
            profile.phase = _phase
            start = time.perf_counter()
            result = _original(*args, **kwargs)
            profile.add(f"{_phase} (wall)", time.perf_counter() - start)
            profile.phase = "update"
            return result

        setattr(azr, function, entered)

    def hidden_row(args, kwargs, result):
        """Transformer.hidden(self, tokens, cos, sin, cache=None, positions=None): a prefill passes a
        cache and no positions; decode steps pass both, the update neither."""
        tokens = args[1]
        cache = args[4] if len(args) > 4 else kwargs.get("cache")
        positions = args[5] if len(args) > 5 else kwargs.get("positions")
        if cache is not None and positions is None:
            return f"{profile.phase}: prefill", tokens.numel()
        return None, 0

    timed(profile, model_module.Transformer, "hidden", hidden_row)
    timed(profile, model_module, "_decode_logits", lambda a, k, r: (f"{profile.phase}: decode", a[2].shape[0]))
    timed(profile, azr.TimedExecutor, "run_batch", lambda a, k, r: (f"{profile.phase}: execution", 0))
    def forward_row(args, kwargs, result):
        """TokenLogprobs.forward(self, tokens, mask=None, with_entropy=False, prefix=None): the rows' tokens
        plus, with a shared prefix (trees since the shared-prefix update), the prefix once."""
        prefix = kwargs.get("prefix")
        return "update: forward", args[1].numel() + (0 if prefix is None else prefix.numel())

    timed(profile, azr.TokenLogprobs, "forward", forward_row)
    timed(profile, azr, "policy_update", lambda a, k, r: ("update: total", 0))
    timed(profile, azr.torch.optim.AdamW, "step", lambda a, k, r: ("update: optimizer", 0))
    if hasattr(azr.Sampler, "refresh"):
        timed(profile, azr.Sampler, "refresh", lambda a, k, r: ("sampler refresh", 0))
    else:
        timed(profile, azr, "refresh_sampler_model", lambda a, k, r: ("sampler refresh", 0))
    timed(profile, azr.rundir, "save_checkpoint", lambda a, k, r: ("checkpoint", 0))
    original_step = azr.self_play_step

    def step(*args, **kwargs):
        """The step's wall time less any checkpoint written inside it (older trees checkpoint there)."""
        checkpoint_before = profile.seconds.get("checkpoint", 0.0)
        start = time.perf_counter()
        result = original_step(*args, **kwargs)
        checkpoint_inside = profile.seconds.get("checkpoint", 0.0) - checkpoint_before
        profile.add("step (wall, without checkpoint)", time.perf_counter() - start - checkpoint_inside)
        return result

    azr.self_play_step = step


# ----------------------------------------------------------------------------- one run
def run_once(args):
    """Profile args.steps steps of the tree in args.code (this one by default) -> a JSON-able dict."""
    sys.path.insert(0, args.code)
    import torch

    import azr
    import model as model_module
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = measure_limits(args.limit_seconds)
    profile = Profile()
    instrument(profile, azr, model_module)
    with tempfile.TemporaryDirectory() as out:
        flags = ["--preset", "cpu", "--steps", str(args.steps), "--checkpoint-every", "1000000",
                 "--seed-from", args.seed_from, "--out", os.path.join(out, "run"), "--model", args.model]
        cfg = azr.parse_config(flags)
        for assignment in args.set:
            name, value = assignment.split("=", 1)
            if not hasattr(cfg, name):
                print(f"step_profile: {args.code} has no Config.{name}; not set", file=sys.stderr)
                continue
            field_type = type(getattr(cfg, name))
            setattr(cfg, name, value.lower() in ("1", "true", "yes") if field_type is bool else field_type(value))
        loaded, _ = model_module.load_model(cfg.model)
        params = sum(p.numel() for p in loaded.parameters())
        embedding = loaded.embed.weight.numel()
        del loaded
        azr.train(cfg)
        with open(os.path.join(cfg.out, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f]
    sampled = sum(m["tokens_per_s"] * m["time/sampling"] for m in metrics)
    # the response tokens the update trains on: every group's mean response length x its rollouts
    groups = [key for key in metrics[0] if key.endswith("/response_length")]
    trained = sum((m.get(key) or 0) * cfg.batch_size for m in metrics for key in groups)
    return {"code": args.code, "threads": torch.get_num_threads(), "limits": limits, "seconds": profile.seconds,
            "tokens": profile.tokens, "calls": profile.calls, "params": params, "embedding": embedding, "sampled_tokens": sampled,
            "trained_tokens": trained,
            "int8_decode": bool(getattr(cfg, "int8_decode", False))}


# ----------------------------------------------------------------------------- the table
ROW_ORDER = ["propose", "learnability", "solve"]


def limit_fraction(row, seconds, tokens, result):
    """-> (achieved, limit, unit) for the FLOP- or bandwidth-bound rows, else None."""
    limits = result["limits"]
    non_embedding = result["params"] - result["embedding"]
    if row.endswith("prefill"):
        return 2 * non_embedding * tokens / seconds / 1e9, limits["fp32_gflops"], "GFLOP/s"
    if row.endswith("decode"):
        # Each call is one decode step, which reads every weight once: int8 linears, or fp32.
        bytes_per_param = 1 if result["int8_decode"] else 4
        steps = result["calls"][row]
        return bytes_per_param * result["params"] * steps / seconds / 1e9, limits["copy_gbs"], "GB/s"
    if row == "update: forward":
        return 2 * non_embedding * tokens / seconds / 1e9, limits["fp32_gflops"], "GFLOP/s"
    return None


def table_rows(result):
    seconds = dict(result["seconds"])
    tokens = dict(result["tokens"])
    update_total = seconds.pop("update: total", 0.0)
    backward = update_total - seconds.get("update: forward", 0.0) - seconds.get("update: optimizer", 0.0)
    seconds["update: backward (+ clip)"] = backward
    step = seconds.pop("step (wall, without checkpoint)", 0.0)
    rows = []
    for phase in ROW_ORDER:
        for part in ("prefill", "decode", "execution"):
            name = f"{phase}: {part}"
            if name in seconds:
                rows.append((name, seconds[name], tokens.get(name, 0)))
        rows.append((f"{phase} (wall)", seconds.get(f"{phase} (wall)", 0.0), 0))
    for name in ("update: forward", "update: backward (+ clip)", "update: optimizer", "sampler refresh"):
        rows.append((name, seconds.get(name, 0.0), tokens.get(name, 0)))
    rows.append(("step (wall, without checkpoint)", step, 0))
    return rows


def print_table(results, title):
    """results: one dict per repeat (medians are taken over them)."""
    print(f"\n{title}: {len(results)} run(s), {results[0]['threads']} thread(s); machine: "
          f"{statistics.median(r['limits']['fp32_gflops'] for r in results):.0f} GFLOP/s fp32, "
          f"{statistics.median(r['limits']['bf16_gflops'] for r in results):.1f} GFLOP/s bf16, "
          f"{statistics.median(r['limits']['copy_gbs'] for r in results):.1f} GB/s copy")
    print(f"{'phase':<34}{'seconds':>10}{'tokens':>10}{'achieved':>18}{'of limit':>10}")
    per_run = [table_rows(r) for r in results]
    for index, (name, _, _) in enumerate(per_run[0]):
        seconds = statistics.median(rows[index][1] for rows in per_run)
        tokens = statistics.median(rows[index][2] for rows in per_run)
        line = f"{name:<34}{seconds:>10.1f}{int(tokens):>10}"
        bound = None
        if seconds > 0:
            bound = limit_fraction(name, seconds, tokens, results[0])
        if bound:
            achieved, limit, unit = bound
            line += f"{achieved:>12.1f} {unit:<7}{achieved / limit:>8.0%}"
        print(line)
    step = statistics.median(rows[-1][1] for rows in per_run)
    sampled = statistics.median(r["sampled_tokens"] for r in results)
    print(f"{'seconds per sampled token':<34}{step / max(1, sampled):>10.3f}")
    trained = statistics.median(r["trained_tokens"] for r in results)
    print(f"{'seconds per trained token':<34}{step / max(1, trained):>10.3f}")
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree; the table shows medians")
    parser.add_argument("--seed-from", default=os.path.join(HERE, "docs", "cpu-run"))
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a Config field")
    parser.add_argument("--baseline", default="", help="an older tree (e.g. from git worktree add /tmp/old b61608d)")
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="time per machine-limit measurement")
    parser.add_argument("--code", default=HERE, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json:
        print("RESULT " + json.dumps(run_once(args)))
        return
    trees = [HERE] + ([os.path.abspath(args.baseline)] if args.baseline else [])
    results = {tree: [] for tree in trees}
    for _ in range(args.repeats):
        for tree in trees:
            command = [sys.executable, os.path.abspath(__file__), "--json", "--code", tree, "--steps", str(args.steps),
                       "--seed-from", args.seed_from, "--model", args.model, "--threads", str(args.threads),
                       "--limit-seconds", str(args.limit_seconds)]
            for assignment in args.set:
                command += ["--set", assignment]
            output = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
            if output.returncode != 0 or not lines:
                sys.exit(f"step_profile: the run of {tree} failed:\n{output.stderr[-3000:]}")
            results[tree].append(json.loads(lines[-1][len("RESULT "):]))
    steps = {tree: print_table(results[tree], tree) for tree in trees}
    if args.baseline:
        print(f"\nstep time: {steps[trees[1]]:.1f} s -> {steps[trees[0]]:.1f} s, "
              f"{steps[trees[1]] / max(1e-9, steps[trees[0]]):.2f}x faster")


if __name__ == "__main__":
    main()
