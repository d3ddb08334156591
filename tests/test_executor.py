"""Tests for executor.py (and executor_worker.py, sandbox.py behind it): one test per attack from the issue
(each also checks that this process is unaffected), correctness of every operation on tricky values, run_batch
ordering and worker replacement."""
import ast
import contextlib
import os
import socket
import tempfile
import threading
import time

import pytest

from executor import BANNED_MODULES, STATUSES, Executor, Result

SECRET = "azr-test-secret-8b1f"
os.environ["AZR_TEST_SECRET"] = SECRET  # set before any worker starts, so a leak would be inherited
TIMEOUT_S = 3.0  # generous: the 2-core machine is shared, and only loops wait it out

LOOP = "def f(x):\n    while True:\n        pass"
RETRY_LOOP = ("def f(x):\n    while True:\n        try:\n            while True:\n                x += 1\n"
              "        except BaseException:\n            pass")
SLEEP = "import select\ndef f(x):\n    select.select([], [], [], 60)\n    return x"
GROW = "def f(x):\n    a = []\n    while True:\n        a.append(' ' * 10 ** 7)"
FORK_BOMB = ("def f(x):\n    o = __import__('o' + 's')\n    while True:\n        try:\n"
             "            o.fork()\n        except OSError:\n            pass")
# A non-daemon thread and a daemonized grandchild (setsid + double fork), both meant to run for a minute.
OUTLIVE = ("def f(x):\n    o = __import__('o' + 's')\n    t = __import__('thre' + 'ading')\n"
           "    t.Thread(target=__import__('ti' + 'me').sleep, args=(60,)).start()\n"
           "    if o.fork() == 0:\n        o.setsid()\n        if o.fork() == 0:\n"
           "            __import__('ti' + 'me').sleep(60)\n        o._exit(0)\n    return x")
READ_SECRET = (
    "def f(name):\n    o = __import__('o' + 's')\n    found = []\n    for pid in o.listdir('/proc'):\n"
    "        try:\n            with open('/proc/' + pid + '/environ', 'rb') as fh:\n"
    f"                found.append({SECRET!r}.encode() in fh.read())\n"
    "        except OSError:\n            pass\n    return (o.environ.get(name), any(found))")


def kill_program(pids):
    """Obfuscated os.kill of the parent, then of `pids` and of every process it may signal (-1)."""
    return ("def f(x):\n    o = getattr(__builtins__, '__imp' + 'ort__')('o' + 's')\n"
            "    k = getattr(o, 'ki' + 'll')\n    k(getattr(o, 'getp' + 'pid')(), 9)\n"
            f"    for target in {tuple(pids) + (-1,)}:\n"
            "        try:\n            k(target, 9)\n        except OSError:\n            pass\n    return x")


@pytest.fixture(scope="module")
def ex():
    with Executor(workers=2, timeout_s=TIMEOUT_S, memory_mb=512, sandbox_uid=61000) as executor:
        yield executor


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    path = tmp_path_factory.mktemp("sentinel") / "sentinel.txt"
    path.write_text("precious")
    return path


def live_processes():
    """{pid: /proc/<pid>/status fields} of every process that is not a zombie (zombies are dead, waiting
    for the host's init to reap them)."""
    processes = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue  # exited while we looked
        if not fields["State"].strip().startswith("Z"):
            processes[int(pid)] = fields
    return processes


def stray_processes(ex):
    """Processes a sandbox left behind. Between calls each worker has one child, its forker, and each forker
    the children waiting for the next calls: two with PID namespaces (one forked ahead), else one. Anything
    else is a stray: more children of a worker or a forker, or any process of this executor's sandbox uids
    (root; each test executor has its own, apart from other executors on the machine) that is not a forker's
    child."""
    processes = live_processes()
    worker_pids = {p.pid for p in ex._procs}
    uids = {str(ex._config["sandbox_uid"] - i) for i in range(ex.workers)}
    forkers = [pid for pid, fields in processes.items() if int(fields["PPid"]) in worker_pids]
    waiting = [pid for pid, fields in processes.items() if int(fields["PPid"]) in forkers]
    strays = []
    for pid, fields in processes.items():
        if fields["Uid"].split()[0] in uids and pid not in waiting:
            strays.append((pid, fields["Name"].strip()))
    waiting_per_forker = 2 if ex.sandbox["pid_ns"] else 1
    if len(forkers) > len(worker_pids) or len(waiting) > waiting_per_forker * len(forkers):
        strays.append(("more than one child of a worker or a forker", forkers + waiting))
    return strays


def assert_unaffected(ex, sentinel):
    """The test process, its files, its environment and the executor all survived the last call."""
    assert sentinel.read_text() == "precious"
    assert os.environ["AZR_TEST_SECRET"] == SECRET
    assert not os.path.exists("/tmp/azr_pwned")
    assert stray_processes(ex) == []
    assert all(p.poll() is None for p in ex._procs)
    assert ex.validate("def f(x):\n    return x + 1", "41") == Result("ok", "42")


# ---------------------------------------------------------------------------------------------------
# Attacks

def test_infinite_loop(ex, sentinel):
    start = time.monotonic()
    assert ex.validate(LOOP, "1").status == "timeout"
    assert time.monotonic() - start < TIMEOUT_S + 5
    assert_unaffected(ex, sentinel)


def test_loop_catching_base_exception(ex, sentinel):
    assert ex.validate(RETRY_LOOP, "1").status == "timeout"
    assert_unaffected(ex, sentinel)


def test_sleep_through_allowed_module(ex, sentinel):
    start = time.monotonic()
    assert ex.validate(SLEEP, "1").status == "timeout"  # no CPU used: only the wall clock stops it
    assert time.monotonic() - start < TIMEOUT_S + 5
    assert_unaffected(ex, sentinel)


def test_memory_bomb(ex, sentinel):
    result = ex.validate("def f(x):\n    return len(bytearray(x))", "10 ** 10")
    assert result.status == "error" and "MemoryError" in result.message
    assert ex.validate(GROW, "1").status == "error"
    assert_unaffected(ex, sentinel)


def test_memory_bomb_across_processes(ex, sentinel):
    # Four children of 300 MB each, held together: RLIMIT_AS (512 MB) is per process and allows each;
    # the per-call memory cgroup (512 MB for all of them) must not.
    program = ("def f(n):\n    o = __import__('o' + 's')\n    kids = []\n    for _ in range(n):\n"
               "        pid = o.fork()\n        if pid == 0:\n            try:\n"
               "                b = b'x' * (300 << 20)\n                __import__('ti' + 'me').sleep(1)\n"
               "                o._exit(0)\n            except BaseException:\n                o._exit(1)\n"
               "        kids.append(pid)\n    return [o.waitstatus_to_exitcode(o.waitpid(k, 0)[1]) for k in kids]")
    result = ex.check_output(program, "4", "[0, 0, 0, 0]")
    if ex.sandbox["memory_cgroup"]:
        # Since every job runs f twice in its process, the second round of children can stall in the
        # cgroup's reclaim until the wall clock ends the call: a timeout is contained too.
        if result.status not in ("error", "timeout"):
            assert ast.literal_eval(result.output).count(0) <= 1, result
    assert_unaffected(ex, sentinel)


def test_fork_bomb(ex, sentinel):
    assert ex.validate(FORK_BOMB, "1").status == "timeout"
    assert_unaffected(ex, sentinel)


def test_fork_bomb_is_capped(ex, sentinel):
    # Children that live until the call ends: how many could it make? RLIMIT_NPROC (64) caps it.
    program = ("def f(x):\n    o = __import__('o' + 's')\n    n = 0\n    for _ in range(1000):\n"
               "        try:\n            if o.fork() == 0:\n                __import__('ti' + 'me').sleep(60)\n"
               "            n += 1\n        except OSError:\n            break\n    return n")
    # 64 processes of the sandbox uid: itself, what it forked, and with PID namespaces the child forked ahead
    # for the next call (it runs as the same uid; a program cannot see it, let alone signal it).
    expected = "62" if ex.sandbox["pid_ns"] else "63"
    result = ex.check_output(program, "1", expected)
    if ex.sandbox["root"]:
        assert result.status == "ok", result
    assert_unaffected(ex, sentinel)


def test_files_outside_temp_dir(ex, sentinel):
    program = (
        "def f(paths):\n    o = __import__('o' + 's')\n    done = []\n    for p in paths:\n        try:\n"
        "            with open(p, 'w') as fh:\n                fh.write('x')\n            done.append(p)\n"
        "        except OSError:\n            pass\n    try:\n        o.remove(paths[0])\n"
        "        done.append('removed')\n    except OSError:\n        pass\n    return done")
    targets = [str(sentinel), "/tmp/azr_pwned", "/dev/shm/azr_pwned", "/var/tmp/azr_pwned",
               "/azr_pwned", os.path.join(os.path.dirname(os.path.abspath(__file__)), "azr_pwned"), "local.txt"]
    result = ex.validate(program, repr(targets))
    assert result.status == "ok"
    assert "'local.txt'" in result.output  # the fresh working directory is writable
    assert str(sentinel) not in result.output and "removed" not in result.output
    for path in targets[1:-1]:
        assert not os.path.exists(path)
    # Each call gets a fresh directory: the previous call's files are gone.
    look = "def f(p):\n    return __import__('o' + 's').path.exists(p)"
    assert ex.validate(look, "'local.txt'").output == "False"
    assert ex.validate(look, "'/tmp/azr_pwned'").output == "False"
    assert_unaffected(ex, sentinel)


@pytest.mark.parametrize("program", [
    "import os\ndef f(x):\n    return os.system('true')",
    "def f(x):\n    import subprocess\n    return subprocess.run(['true']).returncode",
    "from os import system\ndef f(x):\n    return system('true')",
    "import os.path\ndef f(x):\n    return x",
    "def f(x):\n    return __import__('shutil').rmtree('/tmp')",
    "import importlib\ndef f(x):\n    return importlib.import_module('os')",
    "def f(x):\n    class A:\n        def g(self):\n            from concurrent import futures\n    return x",
])
def test_banned_statically(ex, program):
    assert ex.validate(program, "1").status == "banned"


def test_shell_reached_at_run_time(ex, sentinel):
    pid = os.getpid()
    program = (
        "def f(x):\n    o = __import__('o' + 's')\n"
        f"    a = o.system('touch /tmp/azr_pwned; kill -9 {pid}; kill -9 -1; echo $AZR_TEST_SECRET')\n"
        "    sp = __import__('sub' + 'process')\n"
        f"    b = sp.run(['sh', '-c', 'rm -rf {sentinel}; kill -9 {pid}'], capture_output=True).returncode\n"
        "    return (a, b)")
    result = ex.validate(program, "1")
    assert result.status in ("ok", "error")  # contained either way; the point is what follows
    assert SECRET not in result.output + result.message
    assert_unaffected(ex, sentinel)


def test_secret_environment_variable(ex, sentinel):
    assert ex.validate(READ_SECRET, "'AZR_TEST_SECRET'") == Result("ok", "(None, False)")
    assert_unaffected(ex, sentinel)


def test_fifty_megabytes_printed(ex, sentinel):
    program = "def f(x):\n    print('x' * 50_000_000)\n    print('y' * 1000, file=__import__('sy' + 's').stderr)\n    return x"
    assert ex.validate(program, "7") == Result("ok", "7")  # drained and dropped, within the time limit
    assert_unaffected(ex, sentinel)


def test_deep_recursion(ex, sentinel):
    result = ex.validate("def f(n):\n    return f(n + 1)", "0")
    assert result.status == "error" and "RecursionError" in result.message
    # With the limit lifted, C recursion overflows the stack: the child dies, nothing else does.
    program = ("def f(n):\n    __import__('sy' + 's').setrecursionlimit(10 ** 8)\n    return g(n)\n"
               "def g(n):\n    return g.__call__(n + 1)")  # __call__: each level recurses in C too
    result = ex.validate(program, "0")
    assert result.status == "error" and "signal 11" in result.message
    assert_unaffected(ex, sentinel)


def test_kill_parent_obfuscated(ex, sentinel):
    before = [p.pid for p in ex._procs]
    assert ex.validate(kill_program([os.getpid()] + before), "1").status in ("ok", "error")
    assert [p.pid for p in ex._procs] == before  # no worker was killed, let alone this process
    assert_unaffected(ex, sentinel)


def test_nothing_outlives_the_call(ex, sentinel):
    assert ex.validate(OUTLIVE, "3") == Result("ok", "3")  # ok: f's return ended the call, no waiting
    assert_unaffected(ex, sentinel)


def test_no_network(ex, sentinel):
    if not ex.sandbox["net_ns"]:
        pytest.skip("this OS grants no network namespace")
    with socket.create_server(("127.0.0.1", 0)) as server:
        program = ("def f(port):\n    s = __import__('soc' + 'ket')\n    try:\n"
                   "        s.create_connection(('127.0.0.1', port), timeout=1).close()\n        return 'connected'\n"
                   "    except OSError as e:\n        return type(e).__name__")
        result = ex.validate(program, str(server.getsockname()[1]))
        assert result.status == "ok" and result.output != "'connected'"
    assert_unaffected(ex, sentinel)


def test_forged_reply_is_not_a_pass(ex, sentinel):
    # A solver's program writes a fake "everything matched" reply into the result pipe and exits.
    candidate = ("def f(x):\n    o = __import__('o' + 's')\n"
                 "    o.write(3, b'{\"status\": \"ok\", \"values\": []}')\n    o._exit(0)")
    assert ex.check_program(candidate, [("1", "2"), ("2", "4")]).status == "error"
    forged = ("def f(x):\n    o = __import__('o' + 's')\n"
              "    o.write(3, b'{\"status\": \"ok\", \"values\": [[\"4\", [\"int\", \"4\"]]]}')\n    o._exit(0)")
    assert ex.check_program(forged, [("1", "2")]).status == "wrong"  # values are judged by the worker
    assert ex.check_input("def f(x):\n    return 2 * x", "__import__('o' + 's')._exit(0)", "4").status == "syntax"
    assert_unaffected(ex, sentinel)


# ---------------------------------------------------------------------------------------------------
# Operations

def test_interface_constants():
    assert STATUSES == ("ok", "wrong", "error", "timeout", "banned", "nondeterministic", "too_long", "syntax")
    banned = """logging, random, multiprocessing, subprocess, threading, datetime, time, hashlib, hmac,
        calendar, os, sys, shutil, socket, signal, ctypes, pathlib, io, tempfile, pickle, importlib, builtins,
        gc, inspect, asyncio, concurrent, secrets, uuid, resource"""
    assert sorted(BANNED_MODULES) == sorted(m.strip() for m in banned.split(","))


def test_validate(ex):
    program = "from collections import Counter\ndef f(s, k):\n    return Counter(s).most_common(k)"
    assert ex.validate(program, "'abracadabra', 2") == Result("ok", "[('a', 5), ('b', 2)]")
    assert ex.validate("def f(x):\n    return 1 / x", "0").message.startswith("ZeroDivisionError")
    assert ex.validate("def f(x) return x", "1").status == "syntax"
    assert ex.validate("def g(x):\n    return x", "1").status == "syntax"
    assert ex.validate("class A:\n    def f(self, x):\n        return x", "1").status == "syntax"
    assert ex.validate("def f(x):\n    return x", "1), (2").status == "syntax"
    assert ex.validate("def f(x):\n    return x", "[1, 2").status == "syntax"
    assert ex.validate("def f(x):\n    return x", "__import__('os')").status == "banned"
    assert ex.validate("def f(a, b=0, *, c):\n    return a + b + c", "1, c=3") == Result("ok", "4")


def test_validate_determinism(ex):
    counter = "calls = [0]\ndef f(x):\n    calls[0] += 1\n    return x + calls[0]"
    assert ex.validate(counter, "1").status == "nondeterministic"
    assert ex.validate("def f(x):\n    return object()", "1").status == "nondeterministic"
    # nan != nan, so a program returning nan fails the == half of the determinism check.
    assert ex.validate("def f(x):\n    return float('nan')", "1").status == "nondeterministic"
    mutates = "def f(a):\n    a.append(1)\n    return a"
    assert ex.validate(mutates, "[0]") == Result("ok", "[0, 1]")  # the input is rebuilt for each run


# What a program can observe of its run that could tell a validation from a check: the job it was sent (found
# on its stack), its argv, environment, pid, parent, uid, working directory, open descriptors and limits. Its f
# returns a digest of them. (Not the clock, nor the host pid of the child forked before it, which the forker's
# frames hold: those differ from one run to the next whatever the run is, so a program using them is merely
# nondeterministic, which validation looks for.)
SPY = """def f(x):
    sys, os, resource = __import__('s' + 'ys'), __import__('o' + 's'), __import__('reso' + 'urce')
    jobs = []
    frame = sys._getframe().f_back
    while frame is not None:
        for value in frame.f_locals.values():
            if isinstance(value, dict) and 'program' in value:
                jobs.append(sorted(value.items()))
        frame = frame.f_back
    seen = [jobs, sys.argv, sorted(os.environ.items()), os.getpid(), os.getppid(), os.getuid(), os.getcwd(),
            sorted(os.listdir('/proc/self/fd')), [resource.getrlimit(r) for r in range(16)]]
    return __import__('hash' + 'lib').sha256(repr(seen).encode()).hexdigest()
"""
# Honest only while it believes it is validated (the word "validate" anywhere in its stack's locals, argv or
# environment); else it returns the clock.
CHEAT = """def f(x):
    sys, os = __import__('s' + 'ys'), __import__('o' + 's')
    seen = repr(sys.argv) + repr(sorted(os.environ.items())) + str(os.getpid())
    frame = sys._getframe().f_back
    while frame is not None:
        seen += repr(frame.f_locals)
        frame = frame.f_back
    if 'valid' + 'ate' in seen:  # spelt so that its own source, which is in its job, does not match
        return 1
    return __import__('ti' + 'me').time()
"""


def test_a_program_cannot_tell_validation_from_scoring():
    """Validation runs the program in two sandboxed processes that see what a check's process sees (one worker,
    so one sandbox uid for all): what the spy saw while validated, it sees again in every check."""
    with Executor(workers=1, timeout_s=TIMEOUT_S, memory_mb=512, sandbox_uid=61000) as one_worker:
        validated = one_worker.validate(SPY, "0")
        assert validated.status == "ok" and len(validated.output) == 66, validated
        assert one_worker.check_output(SPY, "0", validated.output).status == "ok"
        assert one_worker.check_input(SPY, "0", validated.output).status == "ok"
        assert one_worker.check_program(SPY, [("0", validated.output)]).status == "ok"
        assert one_worker.validate(CHEAT, "0").status == "nondeterministic"


def test_validation_compares_two_processes(ex):
    """A value drawn once per process agrees with itself within one process (the paper's check alone passes it)
    and differs between the two processes of a validation."""
    per_process = "seed = __import__('o' + 's').urandom(8).hex()\ndef f(x):\n    return seed"
    assert ex.validate(per_process, "0").status == "nondeterministic"


def test_output_length_limit(ex):
    program = "def f(n):\n    return 'a' * n"
    assert ex.validate(program, "998") == Result("ok", repr("a" * 998))  # repr: 1000 chars with quotes
    assert ex.validate(program, "999").status == "too_long"
    assert ex.check_output(program, "5000", "'a'").status == "too_long"


def test_tricky_values(ex):
    cases = [  # (function body, output that must round-trip, other spellings that must match, ones that must not)
        ("return {3, 1, 2}", "{1, 2, 3}", ["{3, 2, 1}", "frozenset({1, 2, 3})"], ["{1, 2}", "[1, 2, 3]"]),
        ("return set()", "set()", [], ["{}"]),
        ("return __import__('collections').Counter('abaca')", "Counter({'a': 3, 'b': 1, 'c': 1})",
         ["Counter({'c': 1, 'b': 1, 'a': 3})", "{'a': 3, 'b': 1, 'c': 1}"], ["Counter({'a': 3})"]),
        ("return ((1, (2, 3)), [], ())", "((1, (2, 3)), [], ())", ["((1,(2,3)),[],())"],
         ["((1, [2, 3]), [], ())", "((1, (2, 3)), [])"]),
        ("return 0.1 + 0.2", "0.30000000000000004", [], ["0.3"]),
        ("return 2.0", "2.0", ["2"], ["2.5"]),  # value equality: 2 == 2.0
        ("return float('-inf')", "-inf", ["float('-inf')"], ["inf"]),
        ("return [float('inf'), 1e308 * 10]", "[inf, inf]", [], ["[inf]"]),
        ("return -0.0", "-0.0", ["0.0", "0"], ["1.0"]),  # -0.0 == 0.0
        ("return 'a\"b\\'c\\nd'", repr("a\"b'c\nd"), ['"a\\"b\'c\\nd"'], ["'a\"b\\'c d'"]),
        ("return {'k': (1, 'v'), 2: [None, True]}", "{'k': (1, 'v'), 2: [None, True]}",
         ["{2: [None, True], 'k': (1, 'v')}"], ["{'k': (1, 'v')}"]),
        ("return (1+2j, b'\\x00y')", "((1+2j), b'\\x00y')", [], ["((1+2j), b'y')"]),
        ("return __import__('collections').deque([1, 2])", "deque([1, 2])", [], ["[1, 2]"]),
        ("return __import__('fractions').Fraction(1, 3)", "Fraction(1, 3)", ["Fraction(1,3)"], ["1/3"]),
    ]
    calls = []
    for body, gold, _, _ in cases:
        calls.append(("validate", f"def f(x):\n    {body}", "0"))
    results = ex.run_batch(calls)
    for (body, gold, same, different), result in zip(cases, results):
        assert result == Result("ok", gold), body
    calls = [("check_output", f"def f(x):\n    {body}", "0", pred)
             for body, gold, same, different in cases for pred in [gold] + same + different]
    expected = [s for body, gold, same, different in cases for s in ["ok"] * (1 + len(same)) + ["wrong"] * len(different)]
    assert [r.status for r in ex.run_batch(calls)] == expected


def test_dataclass_output_compares_by_repr(ex):
    program = ("from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n    y: int\n"
               "def f(a):\n    return [P(a, 2 * a)]")
    assert ex.validate(program, "1") == Result("ok", "[P(x=1, y=2)]")
    assert ex.check_output(program, "1", "[P(x=1,  y=2)]").status == "ok"
    assert ex.check_output(program, "1", "[P(x=2, y=1)]").status == "wrong"
    assert ex.check_output(program, "1", "not even python (").status == "wrong"


def test_check_input(ex):
    program = "def f(s, n):\n    return sorted(s)[:n]"
    assert ex.check_input(program, "'cab', 2", "['a', 'b']") == Result("ok", "['a', 'b']")
    assert ex.check_input(program, "['b', 'a', 'z'], 2", "['a', 'b']").status == "ok"  # any input that works
    assert ex.check_input(program, "'xyz', 2", "['a', 'b']").status == "wrong"
    assert ex.check_input(program, "'ab', n=-1", "['a']").status == "ok"
    assert ex.check_input(program, "1, 2", "[]").status == "error"
    assert ex.check_input(program, "'ab'", "[]").status == "error"
    for code_not_data in ["(lambda: 'ab')(), 2", "'ab', len('ab')", "*open('/etc/passwd'), 2",
                          "'ab', f.__globals__", "'ab', **{'n': 1}", "'ab', [x for x in 'ab']"]:
        assert ex.check_input(program, code_not_data, "['a', 'b']").status == "syntax", code_not_data
    counter = "from collections import Counter\ndef f(s):\n    return Counter(s)"
    assert ex.check_input(counter, "'aab'", "Counter({'a': 2, 'b': 1})").status == "ok"
    assert ex.check_input(counter, "'aab'", "Counter({'a': 1, 'b': 2})").status == "wrong"
    with_class = "class V:\n    def __init__(self, n):\n        self.n = n\ndef f(v):\n    return v.n * 2"
    assert ex.check_input(with_class, "V(3)", "6").status == "ok"
    assert ex.check_input(with_class, "V(n=float('inf'))", "inf").status == "ok"


def test_check_program(ex):
    pairs = [("[1, 2, 3]", "6"), ("[]", "0"), ("[-1]", "-1")]
    assert ex.check_program("def f(xs):\n    return sum(xs)", pairs) == Result("ok")
    wrong = ex.check_program("def f(xs):\n    return len(xs)", pairs)
    assert wrong.status == "wrong" and wrong.message.startswith("pair 0")
    assert ex.check_program("def f(xs):\n    return 6 // len(xs)", pairs).status == "error"
    assert ex.check_program("import sys\ndef f(xs):\n    return sum(xs)", pairs).status == "banned"
    assert ex.check_program("def f(xs):\n    return sum(xs", pairs).status == "syntax"
    assert ex.check_program("def f(xs):\n    return set(xs)", [("[2, 1, 2]", "{1, 2}")]).status == "ok"
    assert ex.check_program("def f(xs):\n    return sum(xs)", []).status == "error"


def test_run_script(ex):
    solution = "def add(a, b):\n    return a + b\n"
    assert ex.run_script(solution + "assert add(2, 3) == 5\n") == Result("ok")
    failed = ex.run_script(solution + "assert add(2, 3) == 6, 'add is broken'\n")
    assert failed.status == "error" and "add is broken" in failed.message
    assert ex.run_script("import os, sys, math\nassert math.gcd(4, 6) == 2").status == "ok"  # imports allowed
    assert ex.run_script("def broken(:\n    pass").status == "syntax"
    assert ex.run_script("import sys\nsys.exit(0)\nassert False").status == "error"  # exiting skips tests
    assert ex.run_script("while True:\n    pass").status == "timeout"


def test_run_batch_order_and_bad_calls(ex):
    slow = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s"
    calls = []
    for i in range(12):
        calls.append(("validate", slow, str(200_000 if i % 3 == 0 else i)))
        calls.append(("check_output", "def f(x):\n    return x * 2", str(i), str(2 * i + i % 2)))
    calls += [("nonsense", "x"), ("validate", "def f(x): return x"), ("validate", 1, 2), (), None,
              ("check_program", "def f(x): return x", [("1",)]), ("run_script", "x = 1")]
    results = ex.run_batch(calls)
    assert len(results) == len(calls)
    for i in range(12):
        assert results[2 * i] == Result("ok", str(sum(range(200_000)) if i % 3 == 0 else sum(range(i))))
        assert results[2 * i + 1].status == ("ok" if i % 2 == 0 else "wrong")
    assert [r.status for r in results[24:]] == ["error"] * 6 + ["ok"]
    assert ex.run_batch([]) == []
    assert [r.status for r in ex.run_batch([None, ()])] == ["error"] * 2  # only malformed calls


def test_hash_seed_is_fixed(ex):
    program = "def f(x):\n    return list({'apple', 'pear', 'fig', 'kiwi', 'plum'})"
    outputs = {r.output for r in ex.run_batch([("validate", program, "0")] * 6)}
    assert len(outputs) == 1  # same order in every worker: a gold output must be reproducible


def test_worker_replaced_after_crash(sentinel):
    with Executor(workers=2, timeout_s=5.0, sandbox_uid=62000) as ex:
        old = [p.pid for p in ex._procs]
        os.kill(old[0], 9)  # dies while idle
        ex._procs[0].wait()
        results = ex.run_batch([("validate", "def f(x):\n    return -x", str(i)) for i in range(6)])
        assert [r.output for r in results] == [str(-i) for i in range(6)]
        # dies in the middle of a call: that call is an error, the rest of the batch goes on
        sleeper = "import select\ndef f(x):\n    select.select([], [], [], 3)\n    return x"
        threading.Timer(0.5, os.kill, (ex._procs[0].pid, 9)).start()
        threading.Timer(0.5, os.kill, (ex._procs[1].pid, 9)).start()
        results = ex.run_batch([("validate", sleeper, "1")] * 2 + [("validate", "def f(x):\n    return x", "5")])
        assert [r.status for r in results[:2]] == ["error", "error"]
        assert results[2] == Result("ok", "5")
        assert len({p.pid for p in ex._procs} & set(old)) == 0
        time.sleep(0.2)  # the killed workers' children get SIGKILL from the kernel (parent-death signal)
        assert stray_processes(ex) == []
        assert_unaffected(ex, sentinel)


def test_custom_banned_list_and_limits():
    with Executor(workers=1, timeout_s=2.0, banned_modules=("math",), max_output_chars=10) as ex:
        assert ex.validate("import math\ndef f(x):\n    return x", "1").status == "banned"
        assert ex.validate("import json\ndef f(x):\n    return json.dumps(x)", "[1]") == Result("ok", "'[1]'")
        assert ex.validate("def f(x):\n    return x", "'0123456789'").status == "too_long"


def work_dirs(ex):
    """The fresh working directories (no mount namespace) of this executor's children: owned by its sandbox
    uids, or with no uid drop (not root) any."""
    uids = {ex._config["sandbox_uid"] - i for i in range(ex.workers)}
    found = []
    for name in os.listdir(tempfile.gettempdir()):
        path = os.path.join(tempfile.gettempdir(), name)
        with contextlib.suppress(OSError):
            if name.startswith("azr-sandbox-") and (not ex.sandbox["root"] or os.stat(path).st_uid in uids):
                found.append(name)
    return found


def test_without_namespaces(sentinel):
    """Where the OS grants no namespaces: rlimits, the uid drop and the group/uid-wide kills still hold."""
    with Executor(workers=2, timeout_s=TIMEOUT_S, memory_mb=512, namespaces=False, sandbox_uid=63000) as ex:
        assert not (ex.sandbox["net_ns"] or ex.sandbox["pid_ns"] or ex.sandbox["mount_ns"])
        calls = [("validate", LOOP, "1"), ("validate", RETRY_LOOP, "1"), ("validate", SLEEP, "1"),
                 ("validate", GROW, "1"), ("validate", FORK_BOMB, "1"), ("validate", OUTLIVE, "3"),
                 ("validate", READ_SECRET, "'AZR_TEST_SECRET'"),
                 ("validate", f"def f(p):\n    __import__('o' + 's').remove(p)", repr(str(sentinel))),
                 ("validate", "def f(x):\n    open('here.txt', 'w').write('x')\n    return x", "2")]
        results = ex.run_batch(calls)
        assert [r.status for r in results] == ["timeout"] * 3 + ["error", "timeout", "ok", "ok", "error", "ok"]
        assert results[6].output == "(None, False)"
        before = [p.pid for p in ex._procs]
        assert ex.validate(kill_program([os.getpid()] + before), "1").status in ("ok", "error")
        if ex.sandbox["root"]:  # as the trainer's own uid the program could kill the workers
            assert [p.pid for p in ex._procs] == before
        assert len(work_dirs(ex)) <= ex.workers  # those of the children waiting for the next call
        assert_unaffected(ex, sentinel)
    assert work_dirs(ex) == []


def test_without_namespaces_many_quick_calls():
    """Without a PID namespace the forker kills a call's leftovers by uid; that cleanup must be over before the
    next call's child (same uid) starts. A cleanup helper that outlived it once killed that child (signal 9)."""
    with Executor(workers=1, timeout_s=TIMEOUT_S, namespaces=False, sandbox_uid=63500) as ex:
        results = ex.run_batch([("check_output", "def f(a):\n    return a + 1", str(i), str(i + 1)) for i in range(40)])
    assert [r.status for r in results] == ["ok"] * 40
