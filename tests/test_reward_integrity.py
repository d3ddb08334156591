"""Reward integrity: a model-written program must not reach the values it is checked against. Each attack
program scans what it can reach (its stack, its heap, its descriptors, /proc, its environment) for two
tokens: one in a comment of its own source, which the executor necessarily holds for the call, and one in
the expected output. Finding the first shows the scan works; finding the second would be a free reward.
Every attack runs through check_program (induction), check_input (abduction) and check_output (deduction),
with and without Linux namespaces. Then: hostile replies from the sandbox are scored failures, quickly."""
import os

import pytest

from executor import Executor, Result

GOLD = "azr-gold-" + os.urandom(8).hex()  # the expected output of every check below
JOB = "azr-job-" + os.urandom(8).hex()  # in a comment of every attack program
os.environ["AZR_GOLD"] = GOLD  # in the trainer's environment before any worker starts

# Shared by every attack program: note the tokens in whatever it is given; answer with the gold token if
# found (the check then passes), else with the kinds of token found.
PRELUDE = f'''# {JOB}
import re

TOKEN = re.compile(r"azr-(job|gold)-[0-9a-f]{{16}}")
found = {{}}
visited = set()


def note(text):
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    if isinstance(text, str):
        for match in TOKEN.finditer(text):
            found[match.group(1)] = match.group(0)


def scan(obj, depth=3):
    if depth < 0 or id(obj) in visited:
        return
    visited.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray)):
        note(obj)
    elif isinstance(obj, dict):
        for key, value in list(obj.items()):
            scan(key, depth - 1)
            scan(value, depth - 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in list(obj):
            scan(item, depth - 1)


def walk_frames(frame):
    while frame is not None:
        scan(frame.f_locals)
        scan(frame.f_globals, 2)
        frame = frame.f_back


def read_memory(pid):
    with open("/proc/%s/maps" % pid) as maps, open("/proc/%s/mem" % pid, "rb", 0) as mem:
        for line in maps.read().splitlines():
            fields = line.split()
            if not fields[1].startswith("rw"):
                continue
            start, end = [int(a, 16) for a in fields[0].split("-")]
            for chunk_start in range(start, end, 1 << 22):
                try:
                    mem.seek(chunk_start)
                    note(mem.read(min(end - chunk_start, (1 << 22) + 64)))
                except (OSError, OverflowError, ValueError):
                    break


def answer():
    if "gold" in found:
        return found["gold"]
    return sorted(found)
'''

ATTACKS = {
    "frames": '''
def f(x):
    walk_frames(__import__("sy" + "s")._getframe())
    return answer()
''',
    "traceback": '''
def f(x):
    try:
        raise ValueError("look up")
    except ValueError as error:
        walk_frames(error.__traceback__.tb_frame)
    return answer()
''',
    "generator_frames": '''
def f(x):
    def climb():
        yield me[0].gi_frame.f_back
    me = [climb()]
    walk_frames(next(me[0]))
    return answer()
''',
    "gc_heap": '''
def f(x):
    for obj in __import__("g" + "c").get_objects():
        scan(obj, 1)
    return answer()
''',
    "subclasses": '''
def f(x):
    classes = [object]
    done = set()
    while classes:
        cls = classes.pop()
        if id(cls) in done:
            continue
        done.add(id(cls))
        try:
            classes.extend(type.__subclasses__(cls))
        except TypeError:
            pass
        for value in list(vars(cls).values()):
            function = getattr(value, "__func__", value)
            scan(getattr(function, "__globals__", None), 2)
            scan(getattr(function, "__defaults__", None))
            for cell in getattr(function, "__closure__", None) or ():
                try:
                    scan(cell.cell_contents)
                except ValueError:
                    pass
    return answer()
''',
    "inherited_fds": '''
def f(x):
    o = __import__("o" + "s")
    for fd in range(1024):
        try:
            o.set_blocking(fd, False)
            note(o.read(fd, 1 << 20))
        except OSError:
            pass
    for name in o.listdir("/proc/self/fd"):
        try:
            fd = o.open("/proc/self/fd/" + name, o.O_RDONLY | o.O_NONBLOCK)
            note(o.read(fd, 1 << 20))
        except OSError:
            pass
    return answer()
''',
    "own_memory": '''
def f(x):
    try:
        read_memory("self")
    except OSError:  # /proc/self/mem is root's once the sandbox dropped its uid: read it through ctypes
        string_at = __import__("ct" + "ypes").string_at
        with open("/proc/self/maps") as maps:
            for line in maps.read().splitlines():
                fields = line.split()
                if not fields[1].startswith("rw") or (len(fields) > 5 and fields[5] != "[heap]"):
                    continue
                start, end = [int(a, 16) for a in fields[0].split("-")]
                for chunk_start in range(start, end, 1 << 22):
                    note(string_at(chunk_start, min(end - chunk_start, (1 << 22) + 64)))
    return answer()
''',
    "other_processes": '''
def f(x):
    o = __import__("o" + "s")
    pids = {o.getppid()} | set(OTHER_PIDS)
    pids |= {int(p) for p in o.listdir("/proc") if p.isdigit()}
    pids.discard(o.getpid())
    for pid in pids:
        for part in ("environ", "cmdline"):
            try:
                with open("/proc/%s/%s" % (pid, part), "rb") as fh:
                    note(fh.read())
            except OSError:
                pass
        try:
            read_memory(pid)
        except OSError:
            pass
    return answer()
''',
    "environment": '''
def f(x):
    o = __import__("o" + "s")
    scan(dict(o.environ))
    for path in ("/proc/self/environ", "/proc/1/environ", "/proc/%s/environ" % o.getppid()):
        try:
            with open(path, "rb") as fh:
                note(fh.read())
        except OSError:
            pass
    return answer()
''',
}
# Scans that reach the executor's own data about the call (the job): the control that they work.
FINDS_THE_JOB = {"frames", "traceback", "generator_frames", "gc_heap", "own_memory"}


@pytest.fixture(scope="module", params=[True, False], ids=["namespaces", "no-namespaces"])
def ex(request):
    uid = 64000 if request.param else 64500
    with Executor(workers=2, timeout_s=20.0, memory_mb=512, namespaces=request.param, sandbox_uid=uid) as executor:
        yield executor


def attack_program(name, ex):
    """The attack `name`, told the pids of the trainer and the workers in case it can see them."""
    other_pids = [os.getpid()] + [p.pid for p in ex._procs]
    return PRELUDE + f"\nOTHER_PIDS = {other_pids}\n" + ATTACKS[name]


def returned(op, result):
    """What f returned, as text."""
    if op == "check_program":
        return result.message.split(", got ", 1)[1]
    return result.output


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_cannot_reach_the_expected_value(ex, name):
    if name == "other_processes" and not ex.sandbox["root"]:
        pytest.skip("without root, programs run as the trainer's uid and may read its memory (see README)")
    program = attack_program(name, ex)
    calls = [("check_program", program, [("0", repr(GOLD))]),
             ("check_input", program, "0", repr(GOLD)),
             ("check_output", program, "0", repr(GOLD))]
    for (op, *_), result in zip(calls, ex.run_batch(calls)):
        assert result.status == "wrong", (op, result)
        got = returned(op, result)
        assert "gold" not in got, (op, result)
        if name in FINDS_THE_JOB:
            assert got == "['job']", (op, result)


def test_correct_programs_still_pass(ex):
    reverse = "def f(s):\n    return s[::-1]"
    calls = [("check_program", reverse, [(repr(GOLD[::-1]), repr(GOLD)), ("'ab'", "'ba'")]),
             ("check_input", reverse, repr(GOLD[::-1]), repr(GOLD)),
             ("check_output", reverse, repr(GOLD[::-1]), repr(GOLD))]
    assert ex.run_batch(calls) == [Result("ok"), Result("ok", repr(GOLD)), Result("ok", repr(GOLD))]


# ---------------------------------------------------------------------------------------------------
# Hostile replies: a program writes its own "reply" to the result pipe and exits.

def forged_reply(build):
    """A program that runs `build` (which sets `reply`, bytes) in the child and writes it as its reply. HEAD and
    TAIL wrap one value's encoding into an ok reply for one input."""
    return (f"def f(x):\n    o = __import__('o' + 's')\n"
            f"    HEAD = b'{{\"status\": \"ok\", \"values\": [[\"1\", '\n"
            f"    TAIL = b']]}}'\n"
            f"    {build}\n"
            f"    o.write(3, reply)\n    o._exit(0)")


HOSTILE = {
    "huge": "reply = HEAD + b'[\"str\", \"' + b'x' * (20 << 20) + b'\"]' + TAIL",
    "deeply nested JSON": "reply = HEAD + b'[' * 200000 + b']' * 200000 + TAIL",
    "deeply nested encoding": "reply = HEAD + b'[\"list\", [' * 5000 + b'[\"int\", \"1\"]' + b']]' * 5000 + TAIL",
    "set of colliding hashes":  # 2 ** 61 - 1 is the modulus of int hashes: every k * it hashes to 0
        "reply = HEAD + b'[\"set\", [' + b', '.join(b'[\"int\", \"%d\"]' % (k * (2 ** 61 - 1))"
        " for k in range(1, 200000)) + b']]' + TAIL",
    "long text": "reply = b'{\"status\": \"ok\", \"values\": [[\"' + b'1' * 100000 + b'\", [\"int\", \"1\"]]]}'",
    "not JSON": "reply = HEAD",
    "values not a list": "reply = b'{\"status\": \"ok\", \"values\": {\"1\": 2}}'",
    "unknown tag": "reply = HEAD + b'[\"eval\", \"1\"]' + TAIL",
    "bad deque": "reply = HEAD + b'[\"deque\", [], \"x\"]' + TAIL",
    "too many values": "reply = HEAD + b'[\"int\", \"1\"]], [\"1\", [\"int\", \"1\"]' + TAIL",
    "status not a string": "reply = b'{\"status\": [\"ok\"], \"values\": []}'",
}


def test_hostile_replies_are_scored_failures(ex):
    """Each is an error result from the worker; a hang or a crash would show as a timeout or a lost worker."""
    names = sorted(HOSTILE)
    calls = [("check_program", forged_reply(HOSTILE[name]), [("0", "1")]) for name in names]
    workers_before = [p.pid for p in ex._procs]
    results = ex.run_batch(calls)
    for name, result in zip(names, results):
        assert result.status == "error", (name, result)
    assert [p.pid for p in ex._procs] == workers_before
    assert ex.check_program("def f(x):\n    return x + 1", [("0", "1")]) == Result("ok")
