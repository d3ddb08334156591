"""EvalPlus' check of one solution on a list of inputs (HumanEval+ and MBPP+), run in the sandbox by
evals/evalplus.py. Reads {solution, entry_point, inputs, shape, limits, record_time, not_none} on stdin; writes
one JSON line per input: {"out": repr(output) or {"sha256": digest of a long repr}, "time": seconds} until the
first input that raises or runs out of time ({"error": ...}): that input fails whatever was expected, so the
rest is not run."""

import copy
import hashlib
import io
import json
import signal
import sys
import time

MAX_REPR_CHARS = 65536  # longer outputs (MBPP+ has some of 100 MB) travel as a digest of their repr
sys.set_int_max_str_digits(0)  # a right answer may be a huge int; its repr must not fail
request = json.loads(sys.stdin.read())
results = sys.stdout
swallowed = io.StringIO()  # what the solution prints is not its answer (EvalPlus swallows it too)


class TimeLimit(Exception):
    pass


def on_alarm(signum, frame):
    raise TimeLimit("time limit")


def as_tuples(value):
    if isinstance(value, list):
        return tuple(as_tuples(item) for item in value)
    return value


def tuples_of(items):
    return [tuple(item) for item in items]


def shaped(shape, args):
    if shape == "args_tuples":
        return [tuple(arg) for arg in args]
    if shape == "args_lists_of_tuples":
        return [tuples_of(arg) for arg in args]
    if shape == "first_list_of_tuples":
        return [tuples_of(args[0])] + args[1:]
    if shape == "second_tuple":
        return [args[0], tuple(args[1])] + args[2:]
    if shape == "sets_or_empty_dicts":
        return [[set(item) if isinstance(item, list) and item else {} for item in args[0]]]
    if shape == "float_complex":
        return [float(args[0]), complex(args[1])]
    if shape == "first_tuple":
        return [tuple(args[0])] + args[1:]
    if shape == "args_tuples_of_tuples":
        return [tuple(tuples_of(arg)) for arg in args]
    if shape == "first_tuple_of_tuples":
        return [tuple(tuple(item) if isinstance(item, list) else item for item in args[0])]
    if shape == "dict_values_tuples":
        return [{key: tuple(value) for key, value in args[0].items()}] + args[1:]
    if shape == "complex":
        return [complex(args[0])]
    if shape == "deep_tuples":
        return list(as_tuples(args))
    return args


def report(**fields):
    results.write(json.dumps(fields) + "\n")


def plain(value):
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()  # numpy results compare with == in EvalPlus; as builtins their repr does too
    return value


signal.signal(signal.SIGALRM, on_alarm)
sys.stdout = swallowed
sys.stderr = swallowed
namespace = {}  # as EvalPlus' exec(code, {}): __name__ is not "__main__", so main blocks do not run
try:
    exec(compile(request["solution"], "<solution>", "exec"), namespace)
    function = namespace[request["entry_point"]]
except BaseException as e:
    report(error=f"{type(e).__name__}: {e}"[:300])
    raise SystemExit
for index, args in enumerate(request["inputs"]):
    try:
        args = shaped(request["shape"], args)
        if request["record_time"]:
            args = copy.deepcopy(args)
        if request["limits"]:
            signal.setitimer(signal.ITIMER_REAL, request["limits"][index])
        start = time.perf_counter()
        output = function(*args)
        elapsed = time.perf_counter() - start
        signal.setitimer(signal.ITIMER_REAL, 0)
        if request["not_none"]:
            output = output is not None
        text = repr(plain(output))
        if len(text) > MAX_REPR_CHARS:
            text = {"sha256": hashlib.sha256(text.encode()).hexdigest()}
        report(out=text, time=elapsed)
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        report(error=f"{type(e).__name__}: {e}"[:300])
        break
