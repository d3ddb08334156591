"""Run untrusted, model-written Python safely and fast: the banned-module list, the static checks of a
proposal, the sandbox every program runs in, value equality between model-written outputs and real ones, and
the pool of warm workers that the trainer drives through `Executor.run_batch`.

Three processes take part in a call, and only the last one runs model-written code:
- the trainer sends the call (op, program, inputs, and the values to check against) to a worker, as
  length-prefixed JSON over a pipe;
- the worker (a long-lived `python -S` that imports only the standard library) checks the call statically,
  keeps the values to check against, sends the child its job (the program and its inputs, nothing else)
  through a pipe of that call, reads back repr strings and a JSON encoding of the values, and decides
  equality itself, so code the model wrote never judges its own answer;
- the forker, forked by the worker before the worker reads any call, forks each call's child (ahead of the
  call: the child enters the sandbox and waits for its job) and kills and reaps it afterwards. It reads
  nothing but the worker's one-word commands, so the memory a child starts with holds no call's data: no
  expected value, no other call of the batch, nothing of the trainer's. Whatever a program scans (its
  stack, its heap, its own memory, its file descriptors), it finds only its own program and inputs; the
  worker, which holds the rest, is outside its PID namespace, runs as another uid and is not dumpable.

The child enters a fresh PID, mount and IPC namespace (plus the forker's empty network namespace) and a
memory cgroup, mounts private tmpfs over every world-writable directory, sets rlimits, drops to an
unprivileged uid, and only then runs the program. The worker enforces the wall clock; the forker then kills
the child, and killing the init of a PID namespace kills everything inside it, so nothing outlives a call.
Where the OS refuses namespaces or cgroups, the forker falls back to what it may (see `Executor.sandbox`).

Equality (the paper's value ==): values made of exact builtin types (None, bool, int, float, complex, str,
bytes, list, tuple, set, frozenset, dict, Counter, OrderedDict, deque) compare with Python's ==, so
1 == 1.0, -0.0 == 0.0, {1, 2} == {2, 1}, Counter(a=1) == {'a': 1}, and nan != nan (a program returning nan
fails the determinism check). Anything else (dataclasses, Fraction, numpy scalars, defaultdict) compares by
its repr text, normalized through ast.unparse where it parses.
"""
import ast
import contextlib
import ctypes
import fcntl
import json
import math
import operator
import os
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

BANNED_MODULES = ("logging", "random", "multiprocessing", "subprocess", "threading", "datetime", "time",
                  "hashlib", "hmac", "calendar", "os", "sys", "shutil", "socket", "signal", "ctypes", "pathlib",
                  "io", "tempfile", "pickle", "importlib", "builtins", "gc", "inspect", "asyncio", "concurrent",
                  "secrets", "uuid", "resource")  # the paper's program-safety check: no harm to the environment
STATUSES = ("ok", "wrong", "error", "timeout", "banned", "nondeterministic", "too_long", "syntax")
OPS = {"validate": (str, str), "check_output": (str, str, str), "check_input": (str, str, str),
       "check_program": (str, list), "run_script": (str,)}  # op -> argument types
OPS["run_stdio"] = (str, str, (int, float))  # program, its stdin, wall clock in seconds (see Executor.run_stdio)


@dataclass
class Result:
    status: str  # one of STATUSES
    output: str = ""  # repr(f(input)) where one was computed
    message: str = ""  # why, for anything but ok


# ----------------------------------------------------------------------------------------------------
# Static checks and values, done in the worker: parse model text, never run it.

# Constructors and names a model-written value may use (the reprs of builtin containers, Counter/OrderedDict/
# deque, float('inf')/nan); solver-written inputs may also call the program's own classes.
SAFE_CALLS = {"set": set, "frozenset": frozenset, "Counter": Counter, "OrderedDict": OrderedDict,
              "deque": deque, "float": float, "complex": complex, "dict": dict, "list": list, "tuple": tuple}
SAFE_NAMES = {"inf": math.inf, "nan": math.nan}
SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Add: operator.add, ast.Sub: operator.sub}


def _short(text, limit=300):
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _banned_import(tree, banned):
    """First module imported anywhere in `tree` (import, from-import, __import__('x'), import_module('x'))
    with a dotted-name component in `banned`, else None."""
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("__import__", "import_module")):
            names = [str(node.args[0].value)]
        for name in names:
            if any(part in banned for part in name.split(".")):
                return name
    return None


def defines_f(tree):
    """True if the parsed program `tree` defines a function f at top level: every task is about f."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "f":
            return True
    return False


def is_call_of_f(node):
    """True if `node`, parsed from `f(\\n<source>\\n)`, is still one call of the name f. It is not when source
    closes the parenthesis early (`1), g(2` or `1)(2`), which would smuggle a second expression past it."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "f"


def _parse(source, banned, mode):
    """(tree, None) for a program ("exec") or an argument list ("args": the Call node of `f(<source>)`)
    that parses and imports nothing banned, else (None, error reply)."""
    if mode == "exec":
        what = "program"
        text = source
        parse_mode = "exec"
    else:
        what = "input"
        text = f"f(\n{source}\n)"  # newlines: a trailing comment in source cannot swallow the ")"
        parse_mode = "eval"
    try:
        tree = ast.parse(text, mode=parse_mode)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return None, {"status": "syntax", "message": f"{what} does not parse: {e}"}
    if mode == "args":
        tree = tree.body
        if not is_call_of_f(tree):
            return None, {"status": "syntax", "message": "input is not an argument list"}
    bad = _banned_import(tree, banned)
    if bad:
        return None, {"status": "banned", "message": f"{what} imports banned module {bad}"}
    return tree, None


def _is_data(node, classes):
    """True if evaluating `node` runs no code its author wrote: literals, containers, arithmetic,
    SAFE_CALLS/SAFE_NAMES and the program's own top-level classes (the proposer's code, not the solver's)."""
    if isinstance(node, ast.Call):
        name = getattr(node.func, "id", None)
        if name not in SAFE_CALLS and name not in classes:
            return False
        if any(k.arg is None for k in node.keywords):  # `**x`
            return False
        children = node.args + [k.value for k in node.keywords]
    elif isinstance(node, ast.Name):
        return node.id in SAFE_NAMES or node.id in classes
    elif isinstance(node, ast.Attribute):  # e.g. Color.RED of the program's enum
        return getattr(node.value, "id", None) in classes and not node.attr.startswith("_")
    elif isinstance(node, ast.Dict):
        children = node.keys + node.values  # a None key is `**x`
    elif isinstance(node, (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Starred, ast.UnaryOp, ast.BinOp)):
        children = list(ast.iter_child_nodes(node))
    else:
        return isinstance(node, (ast.operator, ast.unaryop, ast.expr_context))
    return all(child is not None and _is_data(child, classes) for child in children)


@dataclass(init=False, repr=False, unsafe_hash=True)  # == and hash compare the normalized .text
class Opaque:
    """A value with no safe literal form (a dataclass, Fraction, defaultdict, <object at 0x..>): its repr text."""
    text: str

    def __init__(self, text):
        self.text = text.strip()
        with contextlib.suppress(Exception):  # canonical spelling (spacing, quotes); unparsable stays verbatim
            self.text = ast.unparse(ast.parse(self.text, mode="eval"))

    def __repr__(self):
        return self.text


def _build(node):
    """The value of an expression node, built from SAFE_CALLS/SAFE_NAMES only; other parts become Opaque."""
    try:
        if isinstance(node, ast.Constant):
            return node.value
        kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}.get(type(node))
        if kind and not any(isinstance(e, ast.Starred) for e in node.elts):
            return kind(_build(e) for e in node.elts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {_build(k): _build(v) for k, v in zip(node.keys, node.values)}
        if type(getattr(node, "op", None)) in SIGNS:  # -1, +2.5, complex (1+2j)
            if isinstance(node, ast.UnaryOp):
                operands = [_build(node.operand)]
            else:
                operands = [_build(node.left), _build(node.right)]
            if all(type(v) in (int, float, complex) for v in operands):
                return SIGNS[type(node.op)](*operands)
        if isinstance(node, ast.Name) and node.id in SAFE_NAMES:
            return SAFE_NAMES[node.id]
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in SAFE_CALLS
                and not any(isinstance(a, ast.Starred) for a in node.args) and all(k.arg for k in node.keywords)):
            args = [_build(a) for a in node.args]
            kwargs = {k.arg: _build(k.value) for k in node.keywords}
            return SAFE_CALLS[node.func.id](*args, **kwargs)
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError):
        pass  # e.g. {[1]}: unhashable; compared as text below
    return Opaque(ast.unparse(node))


def value_of(text):
    """The value a model-written output (a repr) denotes, computed without running any of it."""
    try:
        return _build(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return Opaque(text)


# Container type -> tag in the child's value encoding; exact types only, so subclasses with a custom __eq__
# stay Opaque. A dict-like's items travel flattened: [k0, v0, k1, v1, ...]; a deque's maxlen follows them.
_ENCODED_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset", deque: "deque",
                       dict: "dict", Counter: "Counter", OrderedDict: "OrderedDict"}
_DECODED_CONTAINERS = {tag: kind for kind, tag in _ENCODED_CONTAINERS.items()}
# Tags of _encode with one payload, and what rebuilds the value from it (ints and floats travel as reprs).
_DECODED_SCALARS = {"opaque": Opaque, "bool": bool, "int": int, "float": float, "str": str, "bytes": bytes.fromhex}


def _decode(enc):
    """Inverse of _encode. Raises on malformed input (it comes from an untrusted child); check its size first
    with _is_small_encoding."""
    tag = enc[0]
    payload = enc[1:]
    if tag == "None" and not payload:
        return None
    if tag == "complex":
        real, imag = payload
        return complex(float(real), float(imag))
    if tag in _DECODED_SCALARS:
        (text,) = payload
        return _DECODED_SCALARS[tag](text)
    kind = _DECODED_CONTAINERS[tag]
    items = []
    for element in payload[0]:
        items.append(_decode(element))
    if issubclass(kind, dict):  # items alternate key, value
        return kind(dict(zip(items[::2], items[1::2])))
    return kind(items, *payload[1:])  # a deque's maxlen follows its items


def _is_small_encoding(enc, max_chars):
    """True if `enc` (JSON from a child) is no bigger than the encoding of a value whose repr has max_chars
    characters can be: each element of such a value takes at least one character of the repr and at most four
    JSON items (a list, its tag, one or two payloads), and no string in it is longer than twice the repr (bytes
    travel as hex). Bounds the worker's work on a hostile reply, e.g. a set of ints whose hashes all collide.
    Iterative: the encoding may be nested deeper than the recursion limit."""
    budget = 4 * max_chars + 4
    stack = [enc]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        if isinstance(item, str) and len(item) > 2 * max_chars:
            return False
        if isinstance(item, list):
            stack.extend(item)
    return True


# ----------------------------------------------------------------------------------------------------
# The child: runs inside the sandbox. Everything model-written executes here and nowhere else.

def _encode(value):
    """JSON-able tree for builtin values; ["opaque", repr] for anything else (a cycle ends in RecursionError)."""
    kind = type(value)
    if value is None or kind in (bool, str):
        return ["None"] if value is None else [kind.__name__, value]
    if kind in (int, float, bytes):  # float repr keeps inf, nan and -0.0
        return [kind.__name__, value.hex() if kind is bytes else repr(value)]
    if kind is complex:
        return ["complex", repr(value.real), repr(value.imag)]
    if kind not in _ENCODED_CONTAINERS:
        return ["opaque", repr(value)]
    encoded_items = []
    if isinstance(value, dict):
        for key, item in value.items():
            encoded_items.append(_encode(key))
            encoded_items.append(_encode(item))
    else:
        for item in list(value):  # a copy: an element's model-written __repr__ may change the container
            encoded_items.append(_encode(item))
    if kind is deque:
        return [_ENCODED_CONTAINERS[kind], encoded_items, value.maxlen]
    return [_ENCODED_CONTAINERS[kind], encoded_items]


def _child_run(job):
    """Run one job in the already-sandboxed child; return the reply dict for the worker."""
    if job["op"] == "run_stdio":
        return _child_stdio(job)
    g = {"__name__": "__main__"}
    exec(compile(job["program"], "<program>", "exec"), g)
    if job["op"] == "run_script":
        return {"status": "ok"}
    # inf/nan/Counter/... resolve even when the program did not import them; the program's names win.
    fallback = {k: v for k, v in {**SAFE_CALLS, **SAFE_NAMES}.items() if k not in g}
    limit = job["max_output_chars"]
    values = []
    repeats = []
    for args_source in job["inputs"]:
        call = compile(f"f(\n{args_source}\n)", "<input>", "eval")
        # f runs twice on each input (the input rebuilt: f may have mutated it), in every job: the paper's
        # determinism check compares the two runs of a validation, and a check must look the same to the
        # program (the worker alone knows which it is).
        for runs in (values, repeats):
            value = eval(call, g, fallback)
            text = repr(value)
            if len(text) > limit:  # outputs too long to read back are not valid tasks
                return {"status": "too_long", "message": f"repr has {len(text)} > {limit} chars"}
            runs.append([text, _encoded(value, text)])
    return {"status": "ok", "output": values[0][0], "values": values, "repeats": repeats}


def _encoded(value, text):
    """_encode(value), or the repr text as an opaque value where the value cannot be encoded."""
    try:
        return _encode(value)
    except (ValueError, RecursionError):
        return ["opaque", text]


def _child_main(cfg, features, workdir, job_r, out_w, res_w):
    """The forked child: enter the sandbox, wait for the job on stdin, run it, write the reply to fd 3. Never
    returns."""
    code = SETUP_FAILED
    try:
        _enter_sandbox(cfg, features, cfg["uid"], workdir, job_r, out_w, res_w)  # closes every other descriptor
        job = _read_message(0)  # from the worker: the program and its inputs, no expected value
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the program's stdin: empty
        os.close(null)
        code = 0
        try:
            reply = _child_run(job)
        except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are program errors too
            reply = {"status": "error", "message": "unprintable exception"}
            with contextlib.suppress(BaseException):  # an exception's __str__ is the program's code too
                reply["message"] = _short("".join(traceback.format_exception_only(e)).strip())
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        _write_all(3, json.dumps(reply).encode())
    finally:
        os._exit(code)


def _child_stdio(job):
    """run_stdio in the sandboxed child: the program runs as __main__ with fd 0 reading job["stdin"] and fd 1
    writing a file (both in the private scratch directory), so input(), sys.stdin.buffer, open(0) and
    os.write(1, ...) all behave as in a shell; the whole stdout comes back. SystemExit is a normal end (judges
    read the output either way)."""
    with open("stdin", "w", encoding="utf-8") as fh:
        fh.write(job["stdin"])
    sys.stdout.flush()
    for name, fd, flags in (("stdin", 0, os.O_RDONLY), ("stdout", 1, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(name, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    reply = {"status": "ok"}
    try:
        exec(compile(job["program"], "<program>", "exec"), {"__name__": "__main__"})
    except SystemExit:
        pass
    except BaseException as e:  # noqa: BLE001 - the program's error is a verdict, with the output it wrote so far
        reply = {"status": "error", "message": "unprintable exception"}
        with contextlib.suppress(BaseException):
            reply["message"] = _short("".join(traceback.format_exception_only(e)).strip())
    for stream in (sys.stdout, sys.__stdout__):  # the program may have replaced sys.stdout
        with contextlib.suppress(BaseException):
            stream.flush()
    with open("stdout", "rb") as fh:
        output = fh.read().decode("utf-8", errors="replace")
    if len(json.dumps(output)) > MAX_REPLY_BYTES - 4096:  # the reply pipe's cap, less room for the other fields
        return {"status": "too_long", "message": f"stdout has {len(output)} chars"}
    return dict(reply, output=output)


# ----------------------------------------------------------------------------------------------------
# The sandbox: Linux namespaces, rlimits and privilege drop, via libc (ctypes is banned for programs,
# not for the executor; Python 3.11 has no os.unshare/os.setns).

# unshare(2) flags
CLONE_NEWNS = 0x20000
CLONE_NEWIPC = 0x8000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# mount(2) flags
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")  # world-writable on most systems
# Imported once in the forker, so children get them for free (and even where the uid can't read them).
PRELOADED = ("heapq", "bisect", "itertools", "functools", "operator", "re", "string", "math", "cmath",
             "fractions", "decimal", "statistics", "copy", "typing", "enum", "numbers", "array",
             "textwrap", "unicodedata", "struct", "json", "dataclasses", "collections.abc")
SETUP_FAILED = 113  # child exit code: the sandbox could not be entered, no user code ran
MAX_REPLY_BYTES = 8 << 20  # the most a child's reply may be
KEPT_OUTPUT_BYTES = 2000  # what is kept of a child's stdout/stderr
_libc = ctypes.CDLL(None, use_errno=True)


def _sys(name, *args):
    if getattr(_libc, name)(*args) != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")


def _mount(source, target, fstype, flags, data=None):
    _sys("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
         ctypes.c_ulong(flags), data and data.encode())


def _enter_sandbox(cfg, features, uid, workdir, job_r, out_w, res_w):
    """In the forked child, before any model-written code: isolate, limit, drop privileges."""
    os.setsid()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")  # an out-of-memory kill takes this call's processes, not the forker
    if features["mount_ns"]:
        # A copy of the forker's mount namespace, where every mount is already private (see _probe): our
        # mounts cannot propagate to the host.
        _sys("unshare", CLONE_NEWNS | CLONE_NEWIPC)
        tmpfs_options = f"size={cfg['file_mb']}m,nr_inodes=4096,mode=1777"
        for d in SCRATCH_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options)
        if features["pid_ns"]:  # a /proc that shows only this namespace's processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(workdir)
    # stdin from the job pipe, stdout+stderr into the capped output pipe, the reply pipe on fd 3, nothing else.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (job_r, out_w, res_w)]
    for target, fd in zip((0, 1, 2, 3), (high[0], high[1], high[1], high[2])):
        os.dup2(fd, target)
    os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    cpu = math.ceil(cfg["timeout_s"]) + 1  # a backstop (the wall clock kills first): SIGXCPU, a second later SIGKILL
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    limits = {
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_AS: cfg["memory_mb"] << 20,  # bytes of address space, per process
        resource.RLIMIT_FSIZE: cfg["file_mb"] << 20,  # the largest file it may write
        resource.RLIMIT_NPROC: cfg["max_processes"],  # processes of the sandbox uid
        resource.RLIMIT_CORE: 0,
    }
    for which, limit in limits.items():
        resource.setrlimit(which, (limit, limit))
    if os.geteuid() == 0:  # RLIMIT_NPROC is not enforced for root: a fork bomb needs the uid drop
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _sys("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot regain root
    _sys("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # forker gone -> child gone
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"})
    sys.setrecursionlimit(1000)


def _private_mounts():
    """A mount namespace of the forker's own in which every mount is private, so that nothing mounted here
    or in a child's copy of it reaches the host."""
    _sys("unshare", CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def _unhide_python():
    """Let the sandbox uid import the standard library and site-packages even when Python lives under a
    0700 directory (pyenv in /root): in the forker's private mount namespace, cover each such directory with
    an empty tmpfs and bind-mount back only the entries on Python's paths. Nothing else there is visible."""
    if os.geteuid() != 0:
        return
    blocked = {}  # closed directory -> names inside it that Python needs
    for path in {os.path.realpath(p) for p in sys.path + [sys.prefix, sys.exec_prefix] if p}:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if not os.path.isdir(parent):
                break
            if not os.stat(parent).st_mode & 0o001:
                blocked.setdefault(parent, set()).add(parts[depth])
                break
    for parent, names in blocked.items():
        keep = {n: os.open(os.path.join(parent, n), os.O_PATH) for n in names if os.path.isdir(os.path.join(parent, n))}
        _mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for name, fd in keep.items():
            os.mkdir(os.path.join(parent, name))
            _mount(f"/proc/self/fd/{fd}", os.path.join(parent, name), None, MS_BIND | MS_REC)
            os.close(fd)


def _memory_cgroup(memory_mb):
    """A memory cgroup below the worker's own (v1, or v2 where delegated) capping each call's processes
    together at memory_mb: RLIMIT_AS is per process, so 64 forked children could otherwise take 64 times
    that. The forker moves into it, so each child is born inside: moving a process between cgroups blocks
    every fork on the machine for a moment (the kernel waits out an RCU grace period), too slow for every
    call. What the forker had allocated stays charged where it was. Path, or None where not permitted."""
    with open("/proc/self/cgroup") as fh:
        entries = [line.rstrip("\n").split(":", 2) for line in fh]
    candidates = [(f"/sys/fs/cgroup/memory{rel.rstrip('/')}", "memory.limit_in_bytes")  # v1 memory first
                  for _, controllers, rel in entries if "memory" in controllers.split(",")]
    candidates += [(f"/sys/fs/cgroup{rel.rstrip('/')}", "memory.max")  # then v2
                   for _, controllers, rel in entries if not controllers]
    for parent, limit in candidates:
        path = f"{parent}/azr-executor-{os.getpid()}"
        with contextlib.suppress(OSError):
            for stale in os.listdir(parent):  # left by killed workers
                if stale.startswith("azr-executor-") and not os.path.exists(f"/proc/{stale[13:]}"):
                    with contextlib.suppress(OSError):
                        os.rmdir(f"{parent}/{stale}")
            os.mkdir(path)
            if os.path.exists(f"{path}/cgroup.procs"):  # a real cgroup, not a directory in a tmpfs
                with open(f"{path}/{limit}", "w") as fh:
                    fh.write(str(memory_mb << 20))
                with open(f"{path}/cgroup.procs", "w") as fh:
                    fh.write("0")  # the forker itself; its children follow
                with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
                    fh.write("-1000")  # where permitted, the cgroup's out-of-memory kills spare the forker
                return path
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _remove_memory_cgroup(path):
    """Move the forker back to the worker's cgroup (a cgroup with a process in it cannot be removed), then
    remove the forker's."""
    with contextlib.suppress(OSError):
        with open(f"{os.path.dirname(path)}/cgroup.procs", "w") as fh:
            fh.write("0")
        os.rmdir(path)


def _granted(step, *args):
    """step(*args); False if the OS refused it (OSError), else True."""
    try:
        step(*args)
    except OSError:
        return False
    return True


def _probe(cfg):
    """Which isolation features this OS grants the forker; a trial child proves the full setup works."""
    features = {"root": os.geteuid() == 0, "private_mounts": False, "net_ns": False, "pid_ns": False,
                "mount_ns": False,
                "memory_cgroup": _memory_cgroup(cfg["memory_mb"]) if cfg["namespaces"] else None,
                "pidns_fd": os.open("/proc/self/ns/pid", os.O_RDONLY)}
    if cfg["namespaces"]:
        features["private_mounts"] = _granted(_private_mounts)
        # Without _unhide_python only preloaded or world-readable modules import; it needs the private
        # namespace, or its mounts would land in the host's.
        if features["private_mounts"]:
            _granted(_unhide_python)
        features["net_ns"] = _granted(_sys, "unshare", CLONE_NEWNET)  # forker and children: loopback only, down
        features["pid_ns"] = _granted(_sys, "unshare", CLONE_NEWPID)  # applies to the forker's children
    # Children copy the forker's mount namespace: only a private one keeps their mounts off the host.
    mount_ns_choices = (True, False) if features["private_mounts"] else (False,)
    for mount_ns in mount_ns_choices:
        features["mount_ns"] = mount_ns
        if _sandbox_works(cfg, features):
            return features
    raise RuntimeError("cannot start a sandbox: a trial child could not enter it")


def _kill_uid(uid, deadline):
    """SIGKILL every process of `uid`: kill(-1) from a helper running as that uid, so forks cannot outrun it.
    Returns only once the helper is gone: a helper still alive could hit the next call's child, which runs as
    the same uid. A program of that uid can stop the helper, so past `deadline` the helper is killed."""
    helper = os.fork()
    if helper == 0:
        with contextlib.suppress(BaseException):
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        os._exit(0)
    helper_fd = os.pidfd_open(helper)
    helper_exited = select.select([helper_fd], [], [], max(deadline - time.monotonic(), 0))[0]
    os.close(helper_fd)
    if not helper_exited:
        os.kill(helper, signal.SIGKILL)
    os.waitpid(helper, 0)


def _reap(kill_uid=None):
    """Reap the orphans the forker inherited as subreaper (until reaped they count against RLIMIT_NPROC). With
    kill_uid (no PID namespace took them down), first SIGKILL every process of that uid, and repeat until the
    forker has no children left: all the program started is gone."""
    deadline = time.monotonic() + 5
    while True:
        if kill_uid is not None:
            _kill_uid(kill_uid, deadline)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:  # no children left
            return
        if kill_uid is None or time.monotonic() > deadline:
            return
        time.sleep(0.001)  # killed processes take a moment to become reapable


# ----------------------------------------------------------------------------------------------------
# The forker: forks every sandboxed child, and kills and reaps it when the worker is done with it. It is
# forked from the worker before the worker reads any call and reads nothing but the worker's one-word
# commands, so a child's memory starts without any call's data (see the module docstring).

def _fork_child(features):
    """os.fork(), the child as init of a fresh PID namespace where the OS grants one."""
    if features["pid_ns"]:
        _sys("setns", features["pidns_fd"], CLONE_NEWPID)  # back to the forker's own namespace, then
        _sys("unshare", CLONE_NEWPID)  # a fresh one for the next child
    return os.fork()


def _make_workdir(cfg, features):
    """The child's working directory: the private tmpfs /tmp, or a fresh directory the sandbox uid owns."""
    if features["mount_ns"]:
        return "/tmp"
    workdir = tempfile.mkdtemp(prefix="azr-sandbox-")
    if features["root"]:
        os.chown(workdir, cfg["uid"], cfg["uid"])
    return workdir


def _remove_workdir(workdir):
    if workdir != "/tmp":
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_and_reap(pid, cfg, features):
    """SIGKILL the child and everything it started, reap them all; the child's wait status."""
    os.kill(pid, signal.SIGKILL)  # the init of its PID namespace: takes everything inside along
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    if features["pid_ns"]:
        return status  # nothing escapes a PID namespace, so no orphan of it comes back to us
    if features["root"]:
        _reap(cfg["uid"])  # what left the process group too
    else:
        _reap()
    return status


def _sandbox_works(cfg, features):
    """True if a trial child can enter the sandbox with these features (it runs nothing and exits)."""
    workdir = _make_workdir(cfg, features)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = _fork_child(features)
    except OSError:
        pid = -1
    if pid == 0:
        code = SETUP_FAILED
        try:
            _enter_sandbox(cfg, features, cfg["uid"], workdir, null, null, null)
            code = 0
        finally:
            os._exit(code)
    os.close(null)
    status = None
    if pid > 0:
        status = os.waitpid(pid, 0)[1]
        _reap()
    _remove_workdir(workdir)
    return status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _start_child(commands, cfg, features):
    """Fork a call's child with its work directory and three fresh pipes, and send the worker the other ends (job
    in, reply and output out), or why there is no child; (pid or -1, work directory)."""
    workdir = _make_workdir(cfg, features)
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = _fork_child(features)
        message = {"pid": pid}
    except OSError as e:
        pid = -1
        message = {"error": f"cannot start the sandbox: {e}"}
    if pid == 0:
        os.close(job_w)
        os.close(res_r)
        os.close(out_r)
        _child_main(cfg, features, workdir, job_r, out_w, res_w)
    with contextlib.suppress(OSError):  # the worker has gone: its next command reads as b""
        socket.send_fds(commands, [json.dumps(message).encode()], [job_w, res_r, out_r] if pid > 0 else [])
    for fd in (job_r, job_w, res_r, res_w, out_r, out_w):
        os.close(fd)
    return pid, workdir


def _end_child(child, cfg, features):
    """Kill and reap a child and everything it started, remove its work directory; its wait status (None if
    there was no child)."""
    pid, workdir = child
    status = None
    try:
        if pid > 0:
            status = _kill_and_reap(pid, cfg, features)
    finally:
        _remove_workdir(workdir)
    return status


def _next_command(commands):
    """The worker's next command after a call: b"done", or b"status" to be told the child's wait status; b"" once
    the worker has gone."""
    try:
        return commands.recv(16)
    except ConnectionResetError:  # it closed the socket with our last message unread
        return b""


def _serve_calls(commands, cfg, features):
    """Hand the worker a child for each call before the call comes (fork and sandbox setup are off the call's
    path); at the worker's command after the call, kill and reap that child and everything it started (and
    answer "status" with its wait status). With a PID namespace per child, the next child is forked while the
    current one runs, so ending one call overlaps the next. Without, the cleanup kills every process of the
    sandbox uid, which a waiting child shares, so the next child is forked only after it. Returns once the
    worker has gone."""
    fork_ahead = features["pid_ns"]
    current = _start_child(commands, cfg, features)
    while True:
        upcoming = None
        if fork_ahead:
            upcoming = _start_child(commands, cfg, features)
        command = _next_command(commands)
        status = _end_child(current, cfg, features)  # before any answer: once the worker has one, the call is over
        if not command:
            if upcoming:
                _end_child(upcoming, cfg, features)
            return
        if command == b"status":
            commands.send(json.dumps({"status": status}).encode())
        if fork_ahead:
            current = upcoming
        else:
            current = _start_child(commands, cfg, features)


def _forker_main(commands, cfg):
    """Probe the sandbox, tell the worker what it got, then serve one call after another until the worker goes."""
    _sys("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # worker gone -> forker gone
    _sys("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a program come back to us, not init
    for name in PRELOADED:
        __import__(name)
    features = _probe(cfg)
    granted = {name: bool(features[name]) for name in ("root", "net_ns", "pid_ns", "mount_ns", "memory_cgroup")}
    commands.send(json.dumps(granted).encode())
    _serve_calls(commands, cfg, features)
    if features["memory_cgroup"]:
        _remove_memory_cgroup(features["memory_cgroup"])


def _start_forker(cfg, worker_fds):
    """Fork the forker; its pid and the worker's end of the socket they talk over. worker_fds (the trainer's
    pipes) are closed in the forker, so no child can inherit them."""
    worker_end, forker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            worker_end.close()
            for fd in worker_fds:
                os.close(fd)
            _forker_main(forker_end, cfg)
        except BaseException:  # noqa: BLE001 - report why on stderr; the worker sees the socket close
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    forker_end.close()
    return pid, worker_end


# ----------------------------------------------------------------------------------------------------
# The worker: static checks, one sandboxed child per call (through the forker), verdicts.

def _run_stdio(program, stdin, timeout_s, cfg, features, forker):
    """Reply for run_stdio. No static checks, as for run_script: benchmark programs and judges import what they
    like, every sandbox limit holds. The wall clock is the smaller of timeout_s and the pool's."""
    if not timeout_s > 0:
        return {"status": "error", "message": f"run_stdio needs a positive timeout, got {timeout_s!r}"}
    job = {"op": "run_stdio", "program": program, "stdin": stdin}
    reply = _sandboxed(job, dict(cfg, timeout_s=min(float(timeout_s), cfg["timeout_s"])), features, forker)
    return {k: str(reply.get(k, "")) for k in ("status", "output", "message")}



def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    data = b""
    while len(data) < n:
        if not (chunk := os.read(fd, n - len(data))):
            raise EOFError
        data += chunk
    return data


def _read_message(fd):  # length-prefixed JSON: trainer <-> worker, and the worker's job for a child
    return json.loads(_read_exact(fd, struct.unpack(">I", _read_exact(fd, 4))[0]))


def _send(fd, obj):
    data = json.dumps(obj).encode()
    _write_all(fd, struct.pack(">I", len(data)) + data)


def _has_argument_types(op, args):
    """True if `op` is a known op and `args` has the types OPS lists for it."""
    if op not in OPS or len(args) != len(OPS[op]):
        return False
    for arg, types in zip(args, OPS[op]):
        if not isinstance(arg, types):
            return False
    return True


def _is_text_pair(pair):
    """True for [input text, output text]: exactly two str (JSON turns the caller's tuples into lists)."""
    if not isinstance(pair, list) or len(pair) != 2:
        return False
    return type(pair[0]) is str and type(pair[1]) is str


def _call_error(op, args):
    """Error reply if the call's op or argument types are wrong, else None."""
    if not _has_argument_types(op, args):
        type_names = [type(a).__name__ for a in args]
        return {"status": "error", "message": f"bad call {op!r} with arguments {type_names}"}
    if op != "check_program":
        return None
    pairs = args[1]
    if pairs and all(_is_text_pair(pair) for pair in pairs):
        return None
    return {"status": "error", "message": "check_program needs a non-empty list of (input, output)"}


def _inputs_of(op, args):
    """The argument lists (source text) that f is called with: what the child gets besides the program."""
    if op == "check_program":
        return [source for source, _ in args[1]]
    if op == "run_script":
        return []
    return [args[1]]


def _expected_of(op, args):
    """The output texts the child's values are checked against; they stay in the worker."""
    if op == "check_program":
        return [output for _, output in args[1]]
    if op in ("check_output", "check_input"):
        return [args[2]]
    return []


def _static_error(op, program, inputs, banned):
    """Error reply if the program or an input does not parse, imports a banned module, or (check_input) the
    input is not plain data; else None. Nothing is run."""
    if op == "run_script":
        banned = ()  # benchmark scripts import what they like; every other limit applies
    tree, error = _parse(program, banned, "exec")
    if error:
        return error
    # buffers.py checks the same shapes (defines_f, is_call_of_f) earlier, as format checks of a response with
    # their own reasons; these checks are the ones that hold for every call, whoever sends it.
    if op != "run_script" and not defines_f(tree):
        return {"status": "syntax", "message": "program defines no top-level function f"}
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    for source in inputs:
        call, error = _parse(source, banned, "args")
        if error:
            return error
        # A solver's input must be plain data: code in it could change what f returns.
        if op == "check_input" and not _is_plain_call(call, classes):
            return {"status": "syntax", "message": "predicted input must be literal values"}
    return None


def _is_plain_call(call, classes):
    """True if every argument of the ast.Call `call` is data (see _is_data)."""
    for arg in call.args:
        if not _is_data(arg, classes):
            return False
    for keyword in call.keywords:
        if keyword.arg is None or not _is_data(keyword.value, classes):
            return False
    return True


def _decoded_values(values, count, max_chars):
    """[(repr text, value)] from a child's reply's "values" or "repeats", or None if they are not what an honest
    child sends: `count` entries, each a repr of at most max_chars characters and an encoding no bigger than such a
    repr allows."""
    if not isinstance(values, list) or len(values) != count:
        return None
    decoded = []
    for entry in values:
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
            return None
        text = entry[0]
        encoding = entry[1]
        if len(text) > max_chars or not _is_small_encoding(encoding, max_chars):
            return None
        try:
            decoded.append((text, _decode(encoding)))
        except Exception:  # noqa: BLE001 - a program can write anything to its reply pipe
            return None
    return decoded


def _equal(value, want):
    """value == want for decoded values: builtins or Opaque on both sides, so no model-written __eq__ runs."""
    with contextlib.suppress(RecursionError):
        return bool(value == want)
    return False


def _verdict(op, reply, expected, max_chars):
    """Reply dict for a check_* call whose child ended ok: does each value equal its expected output text?"""
    got = _decoded_values(reply.get("values"), len(expected), max_chars)
    if got is None:
        return {"status": "error", "message": "malformed reply from the sandbox"}
    output = "" if op == "check_program" else got[0][0]
    for i, (text, value) in enumerate(got):
        want = value_of(expected[i])
        if not _equal(value, want):
            where = f"pair {i}: " if op == "check_program" else ""
            return {"status": "wrong", "output": output, "message": _short(f"{where}expected {want!r}, got {text}")}
    return {"status": "ok", "output": output, "message": ""}


def _determinism_verdict(first, second, max_chars):
    """Reply dict for a validation from the replies of its two sandboxed runs (each ok, each with f run twice on the
    input): ok with the output if all four values agree (the same repr and ==), else nondeterministic."""
    runs = []
    for reply in (first, second):
        for key in ("values", "repeats"):
            decoded = _decoded_values(reply.get(key), 1, max_chars)
            if decoded is None:
                return {"status": "error", "message": "malformed reply from the sandbox"}
            runs.append(decoded[0])
    text, value = runs[0]
    for other_text, other_value in runs[1:]:
        if other_text != text or not _equal(other_value, value):
            return {"status": "nondeterministic", "message": f"{_short(text, 200)} != {_short(other_text, 200)}"}
    return {"status": "ok", "output": text, "message": ""}


class ForkerLink:
    """The worker's end of the socket to the forker. The forker announces each child (its pid and pipes) ahead
    of the call that takes it, so an announcement can arrive before the answer to "status"; it then waits in
    `ahead` for the next call."""

    def __init__(self, sock):
        self.sock = sock
        self.ahead = deque()

    def _receive(self):
        """The forker's next message (dict) and the descriptors that came with it."""
        message, fds, _, _ = socket.recv_fds(self.sock, 1024, 3)
        if not message:
            raise EOFError("the forker is gone")
        return json.loads(message), fds

    def next_child(self):
        """({"pid": pid}, [job_w, res_r, out_r]) for the next call, or ({"error": why}, [])."""
        if self.ahead:
            return self.ahead.popleft()
        return self._receive()

    def end_call(self):
        """The call is over: the forker kills and reaps its child meanwhile."""
        self.sock.send(b"done")

    def end_call_and_wait(self):
        """The call is over: the child's wait status, once the forker has killed and reaped all it started."""
        self.sock.send(b"status")
        while True:
            message, fds = self._receive()
            if "status" in message:
                return message["status"]
            self.ahead.append((message, fds))


def _collect(pidfd, res_r, out_r, timeout_s):
    """Read the child's reply and the start of its stdout/stderr until it exits, its reply passes
    MAX_REPLY_BYTES, or timeout_s passes; (reply, output, timed_out)."""
    reply = bytearray()
    output = bytearray()
    deadline = time.monotonic() + timeout_s
    open_fds = [pidfd, res_r, out_r]
    while pidfd in open_fds and len(reply) <= MAX_REPLY_BYTES:
        ready = select.select(open_fds, [], [], max(deadline - time.monotonic(), 0))[0]
        if not ready:
            return reply, output, True
        for fd in ready:
            chunk = os.read(fd, 1 << 16) if fd != pidfd else b""
            if not chunk:  # the child exited, or every writer of this pipe did
                open_fds.remove(fd)
            elif fd == res_r:
                reply += chunk
            else:  # keep the start of stdout/stderr, drain and drop the rest
                output += chunk[:KEPT_OUTPUT_BYTES - len(output)]
    return reply, output, False


def _read_rest(fd, reply):
    """Append what is left in the reply pipe once all its writers are dead."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while len(reply) <= MAX_REPLY_BYTES and (chunk := os.read(fd, 1 << 16)):
            reply += chunk


def _parsed_reply(reply):
    """The child's reply dict, or None if `reply` is not one (the child died first, or wrote something else)."""
    if len(reply) > MAX_REPLY_BYTES:
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError, RecursionError):
        parsed = json.loads(reply)
        if parsed["status"] in STATUSES and isinstance(parsed.get("message", ""), str):
            return parsed
    return None


def _death(status, output):
    """Error reply for a child that sent no reply, from its wait status and the start of its output."""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        return {"status": "timeout", "message": "CPU time limit"}
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED:
        return {"status": "error", "message": "sandbox setup failed"}
    if os.WIFSIGNALED(status):
        how = f"signal {os.WTERMSIG(status)}"
    else:
        how = f"code {os.waitstatus_to_exitcode(status)}"
    return {"status": "error", "message": _short(f"died without a result ({how}): {output.decode(errors='replace')}")}


def _sandboxed(job, cfg, features, forker):
    """Run `job` in the child the forker has ready, within the wall clock; the child's reply dict."""
    started, fds = forker.next_child()
    if "error" in started:
        forker.end_call()
        return {"status": "error", "message": started["error"]}
    job_w, res_r, out_r = fds
    pidfd = os.pidfd_open(started["pid"])  # readable once the child exits, whoever holds its pipes
    try:
        with contextlib.suppress(BrokenPipeError):  # the child died first: its wait status says why
            _send(job_w, job)
        os.close(job_w)
        reply, output, timed_out = _collect(pidfd, res_r, out_r, cfg["timeout_s"])
        if not timed_out and features["pid_ns"]:
            # The child exited, and as the init of its PID namespace took everything inside along: with a
            # reply in hand, answer now and let the forker reap it meanwhile.
            _read_rest(res_r, reply)
            parsed = _parsed_reply(reply)
            if parsed:
                forker.end_call()
                return parsed
        status = forker.end_call_and_wait()
        _read_rest(res_r, reply)
    finally:
        os.close(pidfd)
        os.close(res_r)
        os.close(out_r)
    if timed_out:
        return {"status": "timeout", "message": f"wall clock {cfg['timeout_s']} s"}
    parsed = _parsed_reply(reply)
    if parsed:
        return parsed
    return _death(status, output)


def _handle(op, args, cfg, features, forker):
    """Reply dict (Result fields) for one call: check it, run it in a child, judge what comes back."""
    error = _call_error(op, args)
    if error:
        return error
    if op == "run_stdio":
        return _run_stdio(*args, cfg=cfg, features=features, forker=forker)
    inputs = _inputs_of(op, args)
    error = _static_error(op, args[0], inputs, frozenset(cfg["banned"]))
    if error:
        return error
    # The job names no op: a validation and a check of the same program and input send the child the same bytes.
    kind = "run_script" if op == "run_script" else "call_f"
    job = {"op": kind, "program": args[0], "inputs": inputs, "max_output_chars": cfg["max_output_chars"]}
    reply = _sandboxed(job, cfg, features, forker)
    if reply["status"] == "ok" and op == "validate":
        # Determinism without trusting the program: a second run in a second sandboxed process, which sees what
        # the first saw and what any check sees, compared here.
        second = _sandboxed(job, cfg, features, forker)
        if second["status"] == "ok":
            return _determinism_verdict(reply, second, cfg["max_output_chars"])
        reply = second
    if reply["status"] != "ok" or op in ("validate", "run_script"):
        return {"status": reply["status"], "output": str(reply.get("output", "")),
                "message": str(reply.get("message", ""))}
    return _verdict(op, reply, _expected_of(op, args), cfg["max_output_chars"])


def _worker_main(config_json):
    """Serve calls from the trainer over stdin/stdout until stdin closes."""
    cfg = json.loads(config_json)
    _sys("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["trainer_pid"]:  # the trainer died before we could ask to follow it
        os._exit(0)
    # Ctrl-C, and the SIGTERM a scheduler sends every process of a job it preempts, are for the trainer: it
    # finishes its step with us (see azr.StopRequest), then closes us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.setrecursionlimit(10_000)  # decoding deeply nested values
    requests = os.dup(0)
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)  # stray prints must not corrupt the protocol
    for fd in (0, 1):
        os.dup2(null, fd)
    forker_pid, forker = _start_forker(cfg, (requests, replies))  # now, while this process holds no call's data
    granted = forker.recv(1024)
    if not granted:  # the forker could not start a sandbox (its traceback is on stderr)
        os._exit(1)
    _sys("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)  # a program running as our uid (no root) cannot read our memory
    features = json.loads(granted)  # what the OS granted the sandbox: root, net_ns, pid_ns, ... (bools)
    _send(replies, features)
    link = ForkerLink(forker)
    while True:
        try:
            op, args = _read_message(requests)
        except EOFError:  # the trainer closed us: the forker cleans up (children, work dirs, cgroup), then we exit
            forker.close()
            os.waitpid(forker_pid, 0)
            os._exit(0)
        try:
            reply = _handle(op, args, cfg, features, link)
        except EOFError:  # the forker is gone: the trainer replaces this worker
            os._exit(1)
        except Exception as e:  # noqa: BLE001 - a worker bug must cost one call, not the batch
            reply = {"status": "error", "message": _short(f"executor error: {e!r}")}
        _send(replies, reply)


# ----------------------------------------------------------------------------------------------------
# The trainer side: a pool of workers, a select loop, nothing model-written is ever evaluated here.

_WORKER_BOOT = ("import importlib.util as u, sys; s = u.spec_from_file_location('azr_executor', sys.argv[1]); "
                "m = u.module_from_spec(s); s.loader.exec_module(m); m._worker_main(sys.argv[2])")
GRACE_S = 10.0  # worker overhead beyond a call's wall clock before the trainer declares the worker hung


class Executor:
    """Pool of sandbox workers: one call per method below, or many through run_batch. Not thread-safe."""

    def __init__(self, workers=None, timeout_s=5.0, memory_mb=1024, banned_modules=BANNED_MODULES,
                 max_output_chars=1000, file_mb=16, max_processes=64, sandbox_uid=65534, namespaces=True):
        """workers: processes (default: usable CPUs); timeout_s: wall clock per sandboxed process (a check runs one,
        a validation two); memory_mb: address space per program; file_mb: largest file and size of each scratch
        tmpfs; max_processes:
        RLIMIT_NPROC per sandbox uid; sandbox_uid: when root, worker i of torchrun's local rank r runs programs as
        uid sandbox_uid - r * workers - i (one uid per worker on the node, so one worker's cleanup and process
        limit never touch another's); namespaces=False skips Linux namespaces, as on systems that forbid them."""
        self.workers = workers or len(os.sched_getaffinity(0))
        self.timeout_s = timeout_s
        self.sandbox = {}  # the isolation the OS granted: root, net_ns, pid_ns, mount_ns (all bool)
        self._config = {"timeout_s": timeout_s, "memory_mb": memory_mb, "banned": list(banned_modules),
                        "max_output_chars": max_output_chars, "file_mb": file_mb, "max_processes": max_processes,
                        "namespaces": namespaces, "sandbox_uid": sandbox_uid, "trainer_pid": os.getpid()}
        here = os.path.dirname(os.path.abspath(__file__))  # programs get the trainer's imports minus azr's own
        self._env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                     "PYTHONHASHSEED": "0",  # set and dict-of-str orders, hence reprs, agree across workers
                     "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.abspath(p) != here)}
        self._procs = []
        try:
            for i in range(self.workers):
                self._procs.append(self._spawn(i))
        except BaseException:
            self.close()
            raise

    def _spawn(self, index):
        """Start worker `index` (see sandbox_uid)."""
        uid = self._config["sandbox_uid"] - int(os.environ.get("LOCAL_RANK", 0)) * self.workers - index
        proc = subprocess.Popen([sys.executable, "-S", "-s", "-c", _WORKER_BOOT, os.path.abspath(__file__),
                                 json.dumps(dict(self._config, uid=uid))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=self._env, cwd="/", start_new_session=True)
        try:
            poller = select.poll()  # not select.select: a busy trainer's fd numbers may pass 1024
            poller.register(proc.stdout, select.POLLIN)
            if not poller.poll(60_000):  # milliseconds
                raise EOFError
            self.sandbox = _read_message(proc.stdout.fileno())
        except (EOFError, ValueError):
            with proc:  # leaving it closes the pipes and reaps the worker
                proc.kill()
            raise RuntimeError("executor worker failed to start") from None
        return proc

    def _replace(self, index):
        with self._procs[index] as proc:  # leaving it closes the pipes and reaps the worker
            proc.kill()
        self._procs[index] = self._spawn(index)

    def run_batch(self, calls):
        """Results of `calls` [(op, *args)] in order, run in parallel across the workers; never raises for bad input."""
        pending = deque(enumerate(calls))
        results = [None] * len(pending)
        idle = list(range(len(self._procs)))
        busy = {}  # worker -> (call index, deadline)
        with selectors.DefaultSelector() as selector:
            while pending or busy:
                while pending and idle:
                    worker = idle.pop()
                    i, call = pending.popleft()
                    try:
                        _send(self._procs[worker].stdin.fileno(), [call[0], call[1:]])  # the worker checks types
                    except (TypeError, IndexError, ValueError) as e:
                        results[i] = Result("error", message=f"malformed call: {e!r}")
                        idle.append(worker)
                    except OSError:  # the worker died while idle: replace it and retry the call
                        self._replace(worker)
                        pending.appendleft((i, call))
                        idle.append(worker)
                    else:
                        runs = 2 if call[0] == "validate" else 1  # a validation runs two sandboxed processes
                        busy[worker] = (i, time.monotonic() + runs * self.timeout_s + GRACE_S)
                        selector.register(self._procs[worker].stdout.fileno(), selectors.EVENT_READ, worker)
                deadlines = [deadline for _, deadline in busy.values()]
                wait = min(deadlines, default=0) - time.monotonic()
                ready = [key.data for key, _ in selector.select(max(wait, 0))]
                finished = [w for w in busy if w in ready or time.monotonic() > busy[w][1]]
                for worker in finished:
                    i, _ = busy.pop(worker)
                    selector.unregister(self._procs[worker].stdout.fileno())
                    idle.append(worker)
                    if worker not in ready:
                        results[i] = Result("timeout", message="sandbox worker did not answer")
                        self._replace(worker)
                        continue
                    result = self._read_result(worker)
                    if result is None:
                        results[i] = Result("error", message="sandbox worker crashed")
                        self._replace(worker)
                    else:
                        results[i] = result
        return results

    def _read_result(self, worker):
        """The Result `worker` answered, or None if it crashed instead (its pipe closed or carried garbage)."""
        try:
            return Result(**_read_message(self._procs[worker].stdout.fileno()))
        except (EOFError, OSError, ValueError, TypeError):
            return None

    def validate(self, program, input):  # the paper's task validation; .output = repr(f(input)) when ok
        return self.run_batch([("validate", program, input)])[0]

    def check_output(self, program, input, predicted_output):  # ok iff value(predicted) == f(input)
        return self.run_batch([("check_output", program, input, predicted_output)])[0]

    def check_input(self, program, predicted_input, gold_output):  # ok iff f(predicted) == value(gold)
        return self.run_batch([("check_input", program, predicted_input, gold_output)])[0]

    def check_program(self, candidate_program, pairs):  # ok iff f maps each input of [(input, output)]
        return self.run_batch([("check_program", candidate_program, pairs)])[0]

    def run_script(self, source):  # ok iff a whole script (benchmark tests) ends without an exception;
        return self.run_batch([("run_script", source)])[0]  # imports are free, every limit applies

    def run_stdio(self, program, stdin="", timeout_s=None):
        """Run a whole program with `stdin` as its standard input; .output is everything it wrote to stdout (also
        with status error, when it raised). timeout_s: wall clock of this call, at most the pool's timeout_s. Judges
        compare .output outside the sandbox, so expected outputs never meet the program. In run_batch, the call is
        ("run_stdio", program, stdin, timeout_s)."""
        return self.run_batch([("run_stdio", program, stdin, float(timeout_s or self.timeout_s))])[0]

    def close(self):
        for proc in self._procs:
            proc.stdin.close()  # the worker exits at EOF
        for proc in self._procs:
            with proc:  # leaving it closes the pipes and reaps the worker
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
                proc.kill()  # a no-op once it has exited
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_batch_with_progress(executor, calls, chunk, desc, unit="prog", leave=True):
    """executor.run_batch(calls) behind a progress bar. run_batch is parallel inside; the calls go in chunks of
    `chunk` only so that the bar moves."""
    from tqdm import tqdm  # imported here: workers load this file with `python -S`, which has no site-packages
    results = []
    with tqdm(total=len(calls), desc=desc, unit=unit, leave=leave) as bar:
        for start in range(0, len(calls), chunk):
            batch = calls[start:start + chunk]
            results.extend(executor.run_batch(batch))
            bar.update(len(batch))
    return results
