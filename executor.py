"""Run untrusted, model-written Python safely and fast (spec sections 4 and 7).

Owns the banned-module list, the static checks of a proposal, the sandbox every program runs in, value
equality between model-written outputs and real ones, and the pool of warm fork-server workers that the
trainer drives through `Executor.run_batch`.

One call travels: trainer --(length-prefixed JSON over a pipe)--> worker (a long-lived `python -S` that
imports only the standard library) --fork--> child. The child enters a fresh PID, mount and IPC namespace
(plus the worker's empty network namespace), mounts private tmpfs over every world-writable directory,
sets rlimits, drops to an unprivileged uid, and only then runs the program. It sends back repr strings and
a JSON encoding of the values; whether two values are equal is decided in the worker, so code the model
wrote never gets to judge its own answer. The worker kills the child at the wall-clock deadline; killing
the init of a PID namespace kills everything inside it, so nothing outlives a call.
"""
import ast
import ctypes
import fcntl
import json
import math
import os
import resource
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

BANNED_MODULES = (
    "logging", "random", "multiprocessing", "subprocess", "threading", "datetime", "time", "hashlib",
    "hmac", "calendar", "os", "sys", "shutil", "socket", "signal", "ctypes", "pathlib", "io", "tempfile",
    "pickle", "importlib", "builtins", "gc", "inspect", "asyncio", "concurrent", "secrets", "uuid",
    "resource",
)
STATUSES = ("ok", "wrong", "error", "timeout", "banned", "nondeterministic", "too_long", "syntax")
OPS = {"validate": (str, str), "check_output": (str, str, str), "check_input": (str, str, str),
       "check_program": (str, list), "run_script": (str,)}  # op -> argument types


@dataclass
class Result:
    status: str  # one of STATUSES
    output: str = ""  # repr(f(input)) where one was computed
    message: str = ""  # why, for anything but ok


# ----------------------------------------------------------------------------------------------------
# Static checks and values, done in the worker: parse model text, never run it.

# Constructors and names a model-written value may use; they cover the reprs of the builtin containers,
# collections' Counter/OrderedDict/deque and float('inf')/nan. Solver-written inputs may also call the
# program's own classes.
SAFE_CALLS = {"set": set, "frozenset": frozenset, "Counter": Counter, "OrderedDict": OrderedDict,
              "deque": deque, "float": float, "complex": complex, "dict": dict, "list": list, "tuple": tuple}
SAFE_NAMES = {"inf": math.inf, "nan": math.nan}


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
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Name) and node.func.id == "__import__"
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            names = [node.args[0].value]
        for name in names:
            if any(part in banned for part in name.split(".")):
                return name
    return None


def _parse_program(program, banned, need_f=True):
    """(ast, None) for a program passing spec section 4 checks 1-2, else (None, Result)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return None, Result("syntax", message=f"program does not parse: {e}")
    if need_f and not any(isinstance(n, ast.FunctionDef) and n.name == "f" for n in tree.body):
        return None, Result("syntax", message="program defines no top-level function f")
    bad = _banned_import(tree, banned)
    return (None, Result("banned", message=f"imports banned module {bad}")) if bad else (tree, None)


def _parse_args(text, banned):
    """Call node of `f(<text>)` for an argument-list source, else (None, Result)."""
    try:
        call = ast.parse(f"f(\n{text}\n)", mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return None, Result("syntax", message=f"input does not parse: {e}")
    # `1), g(2` would otherwise smuggle a second expression past the parentheses.
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        return None, Result("syntax", message="input is not an argument list")
    bad = _banned_import(call, banned)
    return (None, Result("banned", message=f"input imports banned module {bad}")) if bad else (call, None)


def _is_data(node, classes):
    """True if evaluating `node` runs no code its author wrote: literals, containers, arithmetic,
    SAFE_CALLS/SAFE_NAMES and the program's own top-level classes (the proposer's code, not the solver's)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_data(e, classes) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is not None and _is_data(k, classes) for k in node.keys) and all(
            _is_data(v, classes) for v in node.values)
    if isinstance(node, ast.Starred):
        return _is_data(node.value, classes)
    if isinstance(node, ast.UnaryOp):
        return _is_data(node.operand, classes)
    if isinstance(node, ast.BinOp):
        return _is_data(node.left, classes) and _is_data(node.right, classes)
    if isinstance(node, ast.Name):
        return node.id in SAFE_NAMES or node.id in classes
    if isinstance(node, ast.Attribute):  # e.g. Color.RED of the program's enum
        return isinstance(node.value, ast.Name) and node.value.id in classes and not node.attr.startswith("_")
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and (node.func.id in SAFE_CALLS or node.func.id in classes)
                and all(_is_data(a, classes) for a in node.args)
                and all(k.arg is not None and _is_data(k.value, classes) for k in node.keywords))
    return False


def _normalize(text):
    """Canonical spelling of an expression (spacing, quotes), or the stripped text if it is not one."""
    text = text.strip()
    try:
        return ast.unparse(ast.parse(text, mode="eval"))
    except Exception:  # noqa: BLE001 - anything unparsable is compared verbatim
        return text


class Opaque:
    """A value with no safe literal form (a dataclass, Fraction, defaultdict, <object at 0x..>), equal to
    another Opaque iff their normalized repr texts are equal."""
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = _normalize(text)

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return self.text


def _build(node):
    """The value of an expression node, built from SAFE_CALLS/SAFE_NAMES only; other parts become Opaque."""
    try:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(
                isinstance(e, ast.Starred) for e in node.elts):
            kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
            return kind(_build(e) for e in node.elts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {_build(k): _build(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = _build(node.operand)
            if type(value) in (int, float, complex):
                return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):  # complex: (1+2j)
            left, right = _build(node.left), _build(node.right)
            if type(left) in (int, float, complex) and type(right) in (int, float, complex):
                return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node, ast.Name) and node.id in SAFE_NAMES:
            return SAFE_NAMES[node.id]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SAFE_CALLS
                and not any(isinstance(a, ast.Starred) for a in node.args)
                and all(k.arg is not None for k in node.keywords)):
            return SAFE_CALLS[node.func.id](*[_build(a) for a in node.args],
                                            **{k.arg: _build(k.value) for k in node.keywords})
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError):
        pass  # e.g. {[1]}: unhashable; compared as text below
    return Opaque(ast.unparse(node))


def value_of(text):
    """The value a model-written output (a repr) denotes, computed without running any of it."""
    try:
        return _build(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return Opaque(text)


def _decode(enc):
    """Inverse of _encode. Raises on malformed input (it comes from an untrusted child)."""
    tag = enc[0]
    if tag == "opaque":
        return Opaque(str(enc[1]))
    if tag == "None":
        return None
    atoms = {"bool": bool, "int": int, "float": float, "str": str, "bytes": bytes.fromhex}
    if tag in atoms:
        return atoms[tag](enc[1])
    if tag == "complex":
        return complex(float(enc[1]), float(enc[2]))
    items = [_decode(e) for e in enc[1]]
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "deque":
        return deque(items, enc[2])
    pairs = [(items[i], items[i + 1]) for i in range(0, len(items), 2)]
    return {"dict": dict, "Counter": lambda p: Counter(dict(p)), "OrderedDict": OrderedDict}[tag](pairs)


def _equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. RecursionError on absurd nesting: not equal
        return False


# ----------------------------------------------------------------------------------------------------
# The child: runs inside the sandbox. Everything model-written executes here and nowhere else.

# What Python calls these types -> our tag; exact types only, so subclasses with custom __eq__ stay Opaque.
_ENCODED_CONTAINERS = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset", deque: "deque",
                       dict: "dict", Counter: "Counter", OrderedDict: "OrderedDict"}


def _encode(value, active):
    """JSON-able tree for builtin values; Opaque(repr) for anything else. `active`: ids on the stack."""
    kind = type(value)
    if value is None:
        return ["None"]
    if kind is bool or kind is str:
        return [kind.__name__, value]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", repr(value)]  # keeps inf, nan and -0.0
    if kind is complex:
        return ["complex", repr(value.real), repr(value.imag)]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind not in _ENCODED_CONTAINERS:
        return ["opaque", repr(value)]
    if id(value) in active:
        raise ValueError("cyclic value")
    active.add(id(value))
    items = value.items() if isinstance(value, dict) else [(v,) for v in value]
    enc = [_ENCODED_CONTAINERS[kind], [_encode(x, active) for item in items for x in item]]
    active.discard(id(value))
    return enc + [value.maxlen] if kind is deque else enc


def _child_run(job):
    """Run one job in the already-sandboxed child; return the reply dict for the worker."""
    g = {"__name__": "__main__"}
    exec(compile(job["program"], "<program>", "exec"), g)
    if job["op"] == "run_script":
        return {"status": "ok"}
    # inf/nan/Counter/... resolve even when the program did not import them; the program's names win.
    fallback = {k: v for k, v in {**SAFE_CALLS, **SAFE_NAMES}.items() if k not in g}

    def call(args_source):
        return eval(compile(f"f(\n{args_source}\n)", "<input>", "eval"), g, fallback)

    limit = job["max_output_chars"]
    if job["op"] == "validate":  # spec section 4 checks 3-4: twice in one process, equal, short enough
        first, second = call(job["inputs"][0]), call(job["inputs"][0])
        text, text2 = repr(first), repr(second)
        if text != text2 or not first == second:
            return {"status": "nondeterministic", "message": f"{_short(text, 200)} != {_short(text2, 200)}"}
        if len(text) > limit:
            return {"status": "too_long", "message": f"repr has {len(text)} > {limit} chars"}
        return {"status": "ok", "output": text}
    values = []
    for args_source in job["inputs"]:
        value = call(args_source)
        text = repr(value)
        if len(text) > limit:
            return {"status": "too_long", "message": f"repr has {len(text)} > {limit} chars"}
        try:
            enc = _encode(value, set())
        except (ValueError, RecursionError):
            enc = ["opaque", text]
        values.append([text, enc])
    return {"status": "ok", "values": values}


def _child_reply(job):
    try:
        return _child_run(job)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are program errors too
        try:
            return {"status": "error", "message": _short("".join(traceback.format_exception_only(e)).strip())}
        except BaseException:  # noqa: BLE001 - an exception whose __str__ raises
            return {"status": "error", "message": "unprintable exception"}


# ----------------------------------------------------------------------------------------------------
# The sandbox: Linux namespaces, rlimits and privilege drop, via libc (ctypes is banned for programs,
# not for the executor; Python 3.11 has no os.unshare/os.setns).

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")  # world-writable on most systems
# Imported once in the worker, so children get them for free (and even where the uid can't read them).
PRELOADED = ("heapq", "bisect", "itertools", "functools", "operator", "re", "string", "math", "cmath",
             "fractions", "decimal", "statistics", "copy", "typing", "enum", "numbers", "array",
             "textwrap", "unicodedata", "struct", "json", "dataclasses", "collections.abc")
SETUP_FAILED = 113  # child exit code: the sandbox could not be entered, no user code ran
MAX_REPLY_BYTES = 8 << 20
KEPT_OUTPUT_BYTES = 2000
_libc = ctypes.CDLL(None, use_errno=True)


def _sys(name, *args):
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    _sys("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
         ctypes.c_ulong(flags), data and data.encode())


def _enter_sandbox(cfg, features, uid, workdir, out_w, res_w):
    """In the forked child, before any model-written code: isolate, limit, drop privileges."""
    os.setsid()
    if features["mount_ns"]:
        _sys("unshare", CLONE_NEWNS | CLONE_NEWIPC)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # our mounts must not propagate to the host
        for d in SCRATCH_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={cfg['file_mb']}m,nr_inodes=4096,mode=1777")
        if features["pid_ns"]:  # a /proc that shows only this namespace's processes
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(workdir)
    # stdin from /dev/null, stdout+stderr into the capped output pipe, the reply pipe on fd 3, nothing else.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (os.open(os.devnull, os.O_RDONLY), out_w, res_w)]
    for target, fd in zip((0, 1, 2, 3), (high[0], high[1], high[1], high[2])):
        os.dup2(fd, target)
    os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    cpu = math.ceil(cfg["timeout_s"]) + 1  # CPU backstop; the wall clock normally kills first
    limits = {resource.RLIMIT_CPU: cpu, resource.RLIMIT_AS: cfg["memory_mb"] << 20,
              resource.RLIMIT_FSIZE: cfg["file_mb"] << 20, resource.RLIMIT_NOFILE: 64,
              resource.RLIMIT_NPROC: cfg["max_processes"], resource.RLIMIT_CORE: 0}
    for which, value in limits.items():
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later if the program catches it
        resource.setrlimit(which, (value, value + (which == resource.RLIMIT_CPU)))
    if os.geteuid() == 0:  # RLIMIT_NPROC is not enforced for root: a fork bomb needs the uid drop
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _sys("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot regain root
    _sys("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # worker gone -> child gone
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"})
    sys.setrecursionlimit(1000)


def _unhide_python():
    """Let the sandbox uid import the standard library and site-packages even when Python lives under a
    0700 directory (pyenv in /root): in the worker's own mount namespace, cover each such directory with
    an empty tmpfs and bind-mount back only the entries on Python's paths. Nothing else there is visible."""
    _sys("unshare", CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    blocked = {}  # closed directory -> names inside it that Python needs
    for path in {os.path.realpath(p) for p in sys.path + [sys.prefix, sys.exec_prefix] if p}:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
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


def _probe(cfg):
    """Which isolation features this OS grants the worker; a test child proves the full setup works."""
    features = {"root": os.geteuid() == 0, "net_ns": False, "pid_ns": False, "mount_ns": False}
    if cfg["namespaces"]:
        try:
            if features["root"]:
                _unhide_python()
        except OSError:
            pass  # programs can then import only what is preloaded or world-readable
        try:
            _sys("unshare", CLONE_NEWNET)  # the worker and all its children: loopback only, and it is down
            features["net_ns"] = True
        except OSError:
            pass
        try:
            features["pidns_fd"] = os.open("/proc/self/ns/pid", os.O_RDONLY)
            _sys("unshare", CLONE_NEWPID)
            features["pid_ns"] = True
        except OSError:
            pass
    for mount_ns in (True, False)[not cfg["namespaces"]:]:
        features["mount_ns"] = mount_ns
        reply = _sandboxed({"op": "run_script", "program": "pass"}, cfg, features)
        if reply["status"] == "ok":
            return features
    raise RuntimeError(f"cannot start a sandbox: {reply['message']}")


def _kill_uid(uid):
    """SIGKILL every process of `uid` (used without a PID namespace): kill(-1) from a helper with that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _child_main(job, cfg, features, uid, workdir, out_w, res_w):
    """The forked child: enter the sandbox, run the job, write the reply to fd 3. Never returns."""
    code = SETUP_FAILED
    try:
        _enter_sandbox(cfg, features, uid, workdir, out_w, res_w)
        code = 0
        reply = json.dumps(_child_reply(job)).encode()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        view = memoryview(reply)
        while view:
            view = view[os.write(3, view):]
    finally:
        os._exit(code)


def _sandboxed(job, cfg, features):
    """Fork a sandboxed child for `job`, enforce the wall clock, clean up, return the child's reply."""
    uid = cfg["uid"]
    workdir = "/tmp" if features["mount_ns"] else tempfile.mkdtemp(prefix="azr-sandbox-")
    if workdir != "/tmp" and features["root"]:
        os.chown(workdir, uid, uid)
    out_r, out_w = os.pipe()
    res_r, res_w = os.pipe()
    try:
        if features["pid_ns"]:  # a fresh PID namespace for the next child; the child is its init
            _sys("setns", features["pidns_fd"], CLONE_NEWPID)
            _sys("unshare", CLONE_NEWPID)
        pid = os.fork()
    except OSError as e:
        pid, error = -1, e
    if pid == 0:
        os.close(out_r)
        os.close(res_r)
        _child_main(job, cfg, features, uid, workdir, out_w, res_w)
    os.close(out_w)
    os.close(res_w)
    reply, output, timed_out, status = bytearray(), bytearray(), False, 0
    try:
        if pid < 0:
            return {"status": "error", "message": f"cannot start the sandbox: {error}"}
        deadline = time.monotonic() + cfg["timeout_s"]
        pidfd = os.pidfd_open(pid)
        open_fds = [pidfd, res_r, out_r]
        while pidfd in open_fds and len(reply) <= MAX_REPLY_BYTES:
            remaining = deadline - time.monotonic()
            ready = select.select(open_fds, [], [], remaining)[0] if remaining > 0 else []
            if not ready:
                timed_out = True
                break
            for fd in ready:
                chunk = os.read(fd, 1 << 16) if fd != pidfd else b""
                if not chunk:  # the child exited, or every writer of this pipe did
                    open_fds.remove(fd)
                elif fd == res_r:
                    reply += chunk
                elif len(output) < KEPT_OUTPUT_BYTES:  # keep the start, drain and drop the rest
                    output += chunk[:KEPT_OUTPUT_BYTES - len(output)]
        os.close(pidfd)
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)  # init of its PID namespace: takes every process inside along
            if not features["pid_ns"]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if features["root"]:  # also whatever left the process group (setsid, double fork)
                    _kill_uid(uid)
            status = os.waitpid(pid, 0)[1]
            os.set_blocking(res_r, False)  # the rest of the reply; its writers are all dead now
            try:
                while len(reply) <= MAX_REPLY_BYTES and (chunk := os.read(res_r, 1 << 16)):
                    reply += chunk
            except BlockingIOError:
                pass
        os.close(res_r)
        os.close(out_r)
        if workdir != "/tmp":
            shutil.rmtree(workdir, ignore_errors=True)
    return _interpret(reply, status, timed_out, output.decode(errors="replace"), cfg)


def _interpret(reply, status, timed_out, output, cfg):
    if timed_out:
        return {"status": "timeout", "message": f"wall clock {cfg['timeout_s']} s"}
    if len(reply) > MAX_REPLY_BYTES:
        return {"status": "error", "message": "reply too large"}
    try:
        parsed = json.loads(reply)
        if parsed["status"] in STATUSES and isinstance(parsed.get("message", ""), str):
            return parsed
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        return {"status": "timeout", "message": "CPU time limit"}
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED:
        return {"status": "error", "message": "sandbox setup failed"}
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"code {os.waitstatus_to_exitcode(status)}"
    return {"status": "error", "message": _short(f"died without a result ({how}): {output.strip()}")}


# ----------------------------------------------------------------------------------------------------
# The worker: static checks, one sandboxed child per call, verdicts.

def _handle(op, args, cfg, features):
    """Reply dict (Result fields) for one call."""
    if op not in OPS or len(args) != len(OPS[op]) or not all(map(isinstance, args, OPS[op])):
        return {"status": "error", "message": f"bad call {op!r} with arguments of types "
                                              f"{[type(a).__name__ for a in args]}"}
    banned = () if op == "run_script" else frozenset(cfg["banned"])
    tree, err = _parse_program(args[0], banned, need_f=op != "run_script")
    if err:
        return err.__dict__
    job = {"op": op, "program": args[0], "max_output_chars": cfg["max_output_chars"], "inputs": []}
    expected = []
    if op in ("validate", "check_output", "check_input"):
        call, err = _parse_args(args[1], banned)
        if err:
            return err.__dict__
        # A solver's input must be plain data: code in it could fake the value f returns.
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        nodes = call.args + [k.value for k in call.keywords]
        if op == "check_input" and not (all(k.arg is not None for k in call.keywords)
                                        and all(_is_data(n, classes) for n in nodes)):
            return {"status": "syntax", "message": "predicted input must be literal values"}
        job["inputs"] = [args[1]]
        expected = [value_of(args[2])] if op != "validate" else []
    elif op == "check_program":
        pairs = args[1]
        if not pairs or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                for p in pairs):
            return {"status": "error", "message": "check_program needs a non-empty list of (input, output)"}
        for source, _ in pairs:
            err = _parse_args(source, banned)[1]
            if err:
                return err.__dict__
        job["inputs"] = [source for source, _ in pairs]
        expected = [value_of(output) for _, output in pairs]
    reply = _sandboxed(job, cfg, features)
    if reply["status"] != "ok" or op in ("validate", "run_script"):
        return {"status": reply["status"], "output": str(reply.get("output", "")),
                "message": str(reply.get("message", ""))}
    try:
        got = [(str(text), _decode(enc)) for text, enc in reply["values"]]
        assert len(got) == len(expected)
    except Exception:  # noqa: BLE001 - a program can write anything to its reply pipe
        return {"status": "error", "message": "malformed reply from the sandbox"}
    for i, ((text, value), want) in enumerate(zip(got, expected)):
        if not _equal(value, want):
            where = f"pair {i}: " if op == "check_program" else ""
            return {"status": "wrong", "output": text if op != "check_program" else "",
                    "message": _short(f"{where}expected {want!r}, got {text}")}
    return {"status": "ok", "output": got[0][0] if op != "check_program" else "", "message": ""}


def _read_exact(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _send(fd, obj):
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _worker_main(config_json):
    """Serve calls from the trainer over stdin/stdout until stdin closes."""
    cfg = json.loads(config_json)
    _sys("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg["trainer_pid"]:  # the trainer died before we could ask to follow it
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer, which then closes us
    sys.setrecursionlimit(10_000)  # decoding deeply nested values
    requests, replies = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)  # stray prints must not corrupt the protocol
    os.dup2(null, 0)
    os.dup2(null, 1)
    for name in PRELOADED:
        __import__(name)
    features = _probe(cfg)
    _send(replies, {k: v for k, v in features.items() if k != "pidns_fd"})
    while True:
        try:
            op, args = json.loads(_read_exact(requests, struct.unpack(">I", _read_exact(requests, 4))[0]))
        except EOFError:
            os._exit(0)
        try:
            reply = _handle(op, args, cfg, features)
        except Exception as e:  # noqa: BLE001 - a worker bug must cost one call, not the batch
            reply = {"status": "error", "message": _short(f"executor error: {e!r}")}
        _send(replies, reply)


# ----------------------------------------------------------------------------------------------------
# The trainer side: a pool of workers, a select loop, nothing model-written is ever evaluated here.

_WORKER_BOOT = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('azr_executor', "
                "sys.argv[1]); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
                "m._worker_main(sys.argv[2])")
_GRACE_S = 10.0  # worker-side overhead beyond the child's wall clock before we declare the worker hung


class Executor:
    """Pool of sandbox workers. Not thread-safe: call from one thread."""

    def __init__(self, workers=None, timeout_s=5.0, memory_mb=1024, banned_modules=BANNED_MODULES,
                 max_output_chars=1000, file_mb=16, max_processes=64, sandbox_uid=65534, namespaces=True):
        """workers: processes (default: usable CPUs); timeout_s: wall clock per call (all its runs of f);
        memory_mb: address space per program; file_mb: largest file and size of each scratch tmpfs;
        max_processes: RLIMIT_NPROC for the sandbox uid; sandbox_uid: worker i runs programs as uid
        sandbox_uid - i when root; namespaces=False skips Linux namespaces, as on systems without them."""
        self.workers = workers or len(os.sched_getaffinity(0))
        self.timeout_s = timeout_s
        here = os.path.dirname(os.path.abspath(__file__))
        self._config = {"timeout_s": timeout_s, "memory_mb": memory_mb, "banned": list(banned_modules),
                        "max_output_chars": max_output_chars, "file_mb": file_mb,
                        "max_processes": max_processes, "trainer_pid": os.getpid(), "sandbox_uid": sandbox_uid,
                        "namespaces": namespaces,
                        # the trainer's imports minus the repo, so programs can't import azr's modules
                        "sys_path": [p for p in sys.path if p and os.path.abspath(p) != here]}
        self._procs = []
        self.sandbox = {}  # isolation features the OS granted (root, net_ns, pid_ns, mount_ns)
        for i in range(self.workers):
            self._procs.append(self._spawn(i))

    def _spawn(self, index):
        """Start worker `index`; each gets its own uid so one worker's cleanup can't touch another's."""
        cfg = dict(self._config, uid=self._config["sandbox_uid"] - index)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",  # fixed set/dict order
               "PYTHONPATH": os.pathsep.join(cfg.pop("sys_path")), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([sys.executable, "-S", "-s", "-c", _WORKER_BOOT, os.path.abspath(__file__),
                                 json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env, cwd="/", start_new_session=True)
        try:
            ready = select.select([proc.stdout], [], [], 60)[0]
            hello = self._read_message(proc.stdout.fileno()) if ready else None
        except EOFError:
            hello = None
        if hello is None:
            proc.kill()
            proc.wait()
            raise RuntimeError("executor worker failed to start")
        self.sandbox = hello
        return proc

    @staticmethod
    def _read_message(fd):
        size = struct.unpack(">I", _read_exact(fd, 4))[0]
        return json.loads(_read_exact(fd, size))

    def _replace(self, index):
        proc = self._procs[index]
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        self._procs[index] = self._spawn(index)

    def run_batch(self, calls):
        """Results for `calls` [(op, *args)], in order, run in parallel across the workers. Never raises
        for bad programs or malformed calls."""
        results = [None] * len(calls)
        pending = deque(enumerate(calls))
        idle = list(range(len(self._procs)))
        busy = {}  # worker index -> (call index, deadline)
        selector = selectors.DefaultSelector()
        try:
            while pending or busy:
                while pending and idle:
                    worker, (i, call) = idle.pop(), pending.popleft()
                    try:
                        request = [call[0], [list(map(list, a)) if isinstance(a, (list, tuple)) else a
                                             for a in call[1:]]]
                        _send(self._procs[worker].stdin.fileno(), request)
                    except (TypeError, IndexError, ValueError) as e:
                        results[i] = Result("error", message=f"malformed call: {e!r}")
                        idle.append(worker)
                        continue
                    except OSError:  # worker died while idle: replace it and retry the call
                        self._replace(worker)
                        pending.appendleft((i, call))
                        idle.append(worker)
                        continue
                    busy[worker] = (i, time.monotonic() + self.timeout_s + _GRACE_S)
                    selector.register(self._procs[worker].stdout.fileno(), selectors.EVENT_READ, worker)
                wait = min(deadline for _, deadline in busy.values()) - time.monotonic()
                for key, _ in selector.select(max(wait, 0)):
                    worker = key.data
                    selector.unregister(key.fd)
                    i, _ = busy.pop(worker)
                    try:
                        results[i] = Result(**self._read_message(key.fd))
                    except (EOFError, OSError, ValueError, TypeError):
                        results[i] = Result("error", message="sandbox worker crashed")
                        self._replace(worker)
                    idle.append(worker)
                for worker, (i, deadline) in list(busy.items()):
                    if time.monotonic() > deadline:
                        selector.unregister(self._procs[worker].stdout.fileno())
                        del busy[worker]
                        results[i] = Result("timeout", message="sandbox worker did not answer")
                        self._replace(worker)
                        idle.append(worker)
        finally:
            selector.close()
        return results

    def validate(self, program, input):
        """Spec section 4 checks for a (program, input) proposal; .output = repr(f(input)) when ok."""
        return self.run_batch([("validate", program, input)])[0]

    def check_output(self, program, input, predicted_output):
        """Deduction: ok iff the value of `predicted_output` == f(input), else wrong."""
        return self.run_batch([("check_output", program, input, predicted_output)])[0]

    def check_input(self, program, predicted_input, gold_output):
        """Abduction: ok iff f(predicted_input) == the value of `gold_output`, else wrong."""
        return self.run_batch([("check_input", program, predicted_input, gold_output)])[0]

    def check_program(self, candidate_program, pairs):
        """Induction: ok iff the candidate's f maps every input of `pairs` [(input, output repr)] to it."""
        return self.run_batch([("check_program", candidate_program, pairs)])[0]

    def run_script(self, source):
        """Run a whole script (benchmark tests); ok iff it finishes without an exception. No banned-import
        check, every sandbox limit applies."""
        return self.run_batch([("run_script", source)])[0]

    def close(self):
        for proc in self._procs:
            proc.stdin.close()  # the worker exits on EOF
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
