"""Executor throughput: validations per second through Executor.run_batch, for trivial programs and for
a mix of AZR-like programs (with a few errors and timeouts), at 1, 2 and N workers. Also the obvious
alternative for scale: a fresh `python` subprocess per program (no sandbox at all).

    python bench/executor.py [--calls 400] [--workers 1,2,4] [--timeout 1.0]
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from executor import Executor  # noqa: E402

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


def run(calls, workers, timeout_s):
    with Executor(workers=workers, timeout_s=timeout_s) as ex:
        ex.run_batch(calls[:2 * workers])  # warm up
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="validations per measurement")
    parser.add_argument("--workers", default="1,2,N", help="comma-separated worker counts; N = usable CPUs")
    parser.add_argument("--timeout", type=float, default=1.0, help="executor timeout_s (the mix has timeouts)")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    counts = sorted({cpus if w.strip() == "N" else int(w) for w in args.workers.split(",")})
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f} at start, timeout_s={args.timeout}\n")
    print("| workload | workers | calls | seconds | validations/s | statuses |")
    print("|---|---:|---:|---:|---:|---|")
    workloads = [("trivial", [("validate", *TRIVIAL)] * args.calls), ("AZR-like", mix(args.calls, False)),
                 ("AZR-like + 4% errors + 1% timeouts", mix(args.calls, True))]
    for name, calls in workloads:
        for workers in counts:
            seconds, statuses = run(calls, workers, args.timeout)
            summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            print(f"| {name} | {workers} | {len(calls)} | {seconds:.2f} | {len(calls) / seconds:.0f} | {summary} |",
                  flush=True)
    calls = mix(50, False)
    seconds = fresh_python(calls)
    print(f"| AZR-like, fresh `python` per program, no sandbox | 1 | {len(calls)} | {seconds:.2f} | "
          f"{len(calls) / seconds:.0f} | - |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
