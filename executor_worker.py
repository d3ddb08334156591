"""The executor's worker: the static checks of a call, the value codec, the code a sandboxed child runs, and
the verdicts. Standard library only: each worker is a long-lived `python -S` that loads this file by path
(executor.py starts it), and this file loads sandbox.py, beside it, the same way; the trainer imports it as
a module for the banned-module list, the static checks and the message framing.

Per call, the worker checks the call statically, keeps the values to check against, sends a child its job
(the program and its inputs, nothing else) through a pipe of that call, reads back repr strings and a JSON
encoding of the values, and decides equality itself, so code the model wrote never judges its own answer.

Equality (the paper's value ==): values made of exact builtin types (None, bool, int, float, complex, str,
bytes, list, tuple, set, frozenset, dict, Counter, OrderedDict, deque) compare with Python's ==, so
1 == 1.0, -0.0 == 0.0, {1, 2} == {2, 1}, Counter(a=1) == {'a': 1}, and nan != nan (a program returning nan
fails the determinism check). Anything else (dataclasses, Fraction, numpy scalars, defaultdict) compares by
its repr text, normalized through ast.unparse where it parses.
"""
import ast
import contextlib
import importlib.util
import json
import math
import operator
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass


def _load_beside(name):
    """The module `name`.py of this folder, loaded by path: a worker runs `python -S` with this folder off
    sys.path (so that programs cannot import azr's files)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"azr_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sandbox = _load_beside("sandbox")

BANNED_MODULES = ("logging", "random", "multiprocessing", "subprocess", "threading", "datetime", "time",
                  "hashlib", "hmac", "calendar", "os", "sys", "shutil", "socket", "signal", "ctypes", "pathlib",
                  "io", "tempfile", "pickle", "importlib", "builtins", "gc", "inspect", "asyncio", "concurrent",
                  "secrets", "uuid", "resource")  # the paper's program-safety check: no harm to the environment
STATUSES = ("ok", "wrong", "error", "timeout", "banned", "nondeterministic", "too_long", "syntax")
OPS = {"validate": (str, str), "check_output": (str, str, str), "check_input": (str, str, str),
       "check_program": (str, list), "run_script": (str,)}  # op -> argument types
OPS["run_stdio"] = (str, str, (int, float))  # program, its stdin, wall clock in seconds (see Executor.run_stdio)
MAX_REPLY_BYTES = 8 << 20  # the most a child's reply may be
KEPT_OUTPUT_BYTES = 2000  # what is kept of a child's stdout/stderr


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
    code = sandbox.SETUP_FAILED
    try:
        sandbox.enter_sandbox(cfg, features, cfg["uid"], workdir, job_r, out_w, res_w)  # closes every other descriptor
        job = read_message(0)  # from the worker: the program and its inputs, no expected value
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


def read_message(fd):  # length-prefixed JSON: trainer <-> worker, and the worker's job for a child
    return json.loads(_read_exact(fd, struct.unpack(">I", _read_exact(fd, 4))[0]))


def send_message(fd, obj):
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
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == sandbox.SETUP_FAILED:
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
            send_message(job_w, job)
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


def worker_main(config_json):
    """Serve calls from the trainer over stdin/stdout until stdin closes."""
    cfg = json.loads(config_json)
    sandbox.syscall("prctl", sandbox.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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
    # now, while this process holds no call's data
    forker_pid, forker = sandbox.start_forker(cfg, (requests, replies), _child_main)
    granted = forker.recv(1024)
    if not granted:  # the forker could not start a sandbox (its traceback is on stderr)
        os._exit(1)
    # a program running as our uid (no root) cannot read our memory
    sandbox.syscall("prctl", sandbox.PR_SET_DUMPABLE, 0, 0, 0, 0)
    features = json.loads(granted)  # what the OS granted the sandbox: root, net_ns, pid_ns, ... (bools)
    send_message(replies, features)
    link = ForkerLink(forker)
    while True:
        try:
            op, args = read_message(requests)
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
        send_message(replies, reply)
