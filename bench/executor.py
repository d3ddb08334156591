"""Executor throughput: calls per second through Executor.run_batch, for validate (trivial programs, a mix of
AZR-like programs, the mix with a few errors and timeouts) and for the checks that score solvers (check_output,
check_input, check_program on the AZR-like mix), at 1, 2 and N workers; each figure is the median of --runs
measurements. Also the obvious alternative for scale: a fresh `python` subprocess per program (no sandbox).

With --baseline OTHER/executor.py (e.g. main's, from `git show main:executor.py > /tmp/old/executor.py`),
every measurement alternates between that executor and this one, so both see the same machine load, and the
table gets the change in calls per second.

    python bench/executor.py [--calls 400] [--workers 1,2,N] [--timeout 1.0] [--runs 3] [--baseline PATH]
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import executor  # noqa: E402

TRIVIAL = ("def f(x):\n    return x", "1")

# Typical proposer output: string/list manipulation, small loops, recursion, collections.
AZR_LIKE = [
    ("def f(s):\n    return ''.join(c.upper() if i % 2 else c for i, c in enumerate(s[::-1]))", "'absolute zero'"),
    ("def f(xs, k):\n    out = []\n    for i in range(0, len(xs), k):\n        out.append(sum(xs[i:i + k]))\n"
     "    return out", "[3, 1, 4, 1, 5, 9, 2, 6], 3"),
    ("def f(n):\n    if n < 2:\n        return n\n    return f(n - 1) + f(n - 2)", "15"),
    ("from collections import Counter\ndef f(words):\n    c = Counter(w[0] for w in words)\n"
     "    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))", "['apple', 'avocado', 'banana', 'cherry']"),
    ("def f(grid):\n    return [list(row) for row in zip(*grid)][::-1]", "[[1, 2, 3], [4, 5, 6]]"),
    ("def f(s):\n    stack = []\n    for ch in s:\n        if ch in '([{':\n            stack.append(ch)\n"
     "        elif stack and '([{'.index(stack[-1]) == ')]}'.index(ch):\n            stack.pop()\n"
     "        else:\n            return False\n    return not stack", "'([]{()})'"),
    ("def f(d, key):\n    return {k: v * 2 for k, v in d.items() if k != key}", "{'a': 1, 'b': 2, 'c': 3}, 'b'"),
    ("import heapq\ndef f(xs, k):\n    return heapq.nsmallest(k, xs), sum(x * x for x in xs)", "[5, 3, 8, 1, 9, 2], 3"),
    ("def f(n):\n    primes = []\n    for c in range(2, n):\n        if all(c % p for p in primes):\n"
     "            primes.append(c)\n    return primes[-5:]", "500"),
    ("def f(s, shift):\n    return ''.join(chr((ord(c) - 97 + shift) % 26 + 97) if c.isalpha() else c for c in s)",
     "'hello world', 3"),
]
ERRORS = [("def f(xs):\n    return xs[10]", "[1, 2]"), ("def f(x):\n    return 1 / x", "0")]
TIMEOUTS = [("def f(x):\n    while True:\n        x += 1", "0")]


def mix(n, faults):
    """n calls of AZR-like programs; with faults, 1 in 25 is an error and 1 in 100 a timeout."""
    calls = []
    for i in range(n):
        if faults and i % 100 == 99:
            program, inp = TIMEOUTS[0]
        elif faults and i % 25 == 24:
            program, inp = ERRORS[i % len(ERRORS)]
        else:
            program, inp = AZR_LIKE[i % len(AZR_LIKE)]
        calls.append(("validate", program, inp))
    return calls


def check_workloads(n, golds):
    """n calls of each check on the AZR-like mix, all answered right (the cost of a wrong answer is the same):
    check_output and check_input with the gold output, check_program with 5 hidden pairs (the gold pair 5
    times: five runs of f, five comparisons)."""
    outputs = []
    inputs = []
    programs = []
    for i in range(n):
        program, inp = AZR_LIKE[i % len(AZR_LIKE)]
        gold = golds[i % len(AZR_LIKE)]
        outputs.append(("check_output", program, inp, gold))
        inputs.append(("check_input", program, inp, gold))
        programs.append(("check_program", program, [(inp, gold)] * 5))
    return [("check_output, AZR-like", outputs), ("check_input, AZR-like", inputs),
            ("check_program, AZR-like, 5 pairs", programs)]


def load_executor(path):
    """The executor module in the file at `path` (another version of executor.py)."""
    spec = importlib.util.spec_from_file_location("baseline_executor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(module, calls, workers, timeout_s):
    """(seconds for run_batch(calls), {status: count}) with module's Executor, after a warm-up batch."""
    with module.Executor(workers=workers, timeout_s=timeout_s) as ex:
        ex.run_batch(calls[:2 * workers])
        start = time.perf_counter()
        results = ex.run_batch(calls)
        seconds = time.perf_counter() - start
    statuses = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return seconds, statuses


def fresh_python(calls):
    """The alternative: one new interpreter per program, no isolation at all."""
    start = time.perf_counter()
    for _, program, inp in calls:
        subprocess.run([sys.executable, "-c", f"{program}\nx = f({inp})\nassert x == f({inp})\nrepr(x)"],
                       capture_output=True, timeout=10)
    return time.perf_counter() - start


def table_row(name, calls, workers, args, baseline):
    """One row of the table: the median of args.runs measurements (alternating with the baseline's, if any)."""
    seconds = []
    baseline_seconds = []
    for _ in range(args.runs):
        if baseline:
            baseline_seconds.append(run(baseline, calls, workers, args.timeout)[0])
        elapsed, statuses = run(executor, calls, workers, args.timeout)
        seconds.append(elapsed)
    median = statistics.median(seconds)
    rate = len(calls) / median
    summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    if not baseline:
        return f"| {name} | {workers} | {len(calls)} | {median:.2f} | {rate:.0f} | {summary} |"
    baseline_rate = len(calls) / statistics.median(baseline_seconds)
    change = 100 * (rate / baseline_rate - 1)
    return f"| {name} | {workers} | {len(calls)} | {baseline_rate:.0f} | {rate:.0f} | {change:+.0f}% | {summary} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="calls per measurement")
    parser.add_argument("--workers", default="1,2,N", help="comma-separated worker counts; N = usable CPUs")
    parser.add_argument("--timeout", type=float, default=1.0, help="executor timeout_s (the mix has timeouts)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per figure (the median is shown)")
    parser.add_argument("--baseline", help="another executor.py to measure alternately with this one")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    counts = sorted({cpus if w.strip() == "N" else int(w) for w in args.workers.split(",")})
    baseline = load_executor(args.baseline) if args.baseline else None
    with executor.Executor(workers=1) as ex:
        golds = [r.output for r in ex.run_batch([("validate", p, i) for p, i in AZR_LIKE])]
    workloads = [("validate, trivial", [("validate", *TRIVIAL)] * args.calls),
                 ("validate, AZR-like", mix(args.calls, False)),
                 ("validate, AZR-like + 4% errors + 1% timeouts", mix(args.calls, True))]
    workloads += check_workloads(args.calls, golds)

    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f} at start, timeout_s={args.timeout}, "
          f"median of {args.runs} runs\n")
    if baseline:
        print("| workload | workers | calls | baseline calls/s | calls/s | change | statuses |")
        print("|---|---:|---:|---:|---:|---:|---|")
    else:
        print("| workload | workers | calls | seconds | calls/s | statuses |")
        print("|---|---:|---:|---:|---:|---|")
    for name, calls in workloads:
        for workers in counts:
            print(table_row(name, calls, workers, args, baseline), flush=True)
    calls = mix(50, False)
    rate = len(calls) / fresh_python(calls)
    name = "validate, AZR-like, fresh `python` per program, no sandbox"
    if baseline:
        print(f"| {name} | 1 | {len(calls)} | - | {rate:.0f} | - | - |")
    else:
        print(f"| {name} | 1 | {len(calls)} | - | {rate:.0f} | - |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
