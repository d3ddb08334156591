"""Run untrusted, model-written Python safely and fast: the pool of warm sandbox workers that the trainer
drives through `Executor.run_batch`, the trainer-facing names (the banned-module list, the static checks
buffers.py uses, value_of), and `run_grouped`, which runs the calls of many items as one batch. The worker,
its checks and value codec are in executor_worker.py; the OS isolation and the forker in sandbox.py. Both
are standard library only and run in `python -S` workers.

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
"""
import contextlib
import json
import os
import select
import selectors
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

from executor_worker import (BANNED_MODULES, STATUSES, defines_f, is_call_of_f, read_message,  # noqa: F401
                             send_message, value_of)

WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "executor_worker.py")


@dataclass
class Result:
    status: str  # one of STATUSES
    output: str = ""  # repr(f(input)) where one was computed
    message: str = ""  # why, for anything but ok



# ----------------------------------------------------------------------------------------------------
# The trainer side: a pool of workers, a select loop, nothing model-written is ever evaluated here.

_WORKER_BOOT = ("import importlib.util as u, sys; "
                "s = u.spec_from_file_location('azr_executor_worker', sys.argv[1]); "
                "m = u.module_from_spec(s); s.loader.exec_module(m); m.worker_main(sys.argv[2])")
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
        proc = subprocess.Popen([sys.executable, "-S", "-s", "-c", _WORKER_BOOT, WORKER_FILE,
                                 json.dumps(dict(self._config, uid=uid))], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=self._env, cwd="/", start_new_session=True)
        try:
            poller = select.poll()  # not select.select: a busy trainer's fd numbers may pass 1024
            poller.register(proc.stdout, select.POLLIN)
            if not poller.poll(60_000):  # milliseconds
                raise EOFError
            self.sandbox = read_message(proc.stdout.fileno())
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
                        send_message(self._procs[worker].stdin.fileno(), [call[0], call[1:]])  # the worker checks types
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
            return Result(**read_message(self._procs[worker].stdout.fileno()))
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


def flatten(groups):
    """A list of lists -> one list: the first list's items, then the second's, ..."""
    flat = []
    for group in groups:
        flat.extend(group)
    return flat


def run_grouped(run, groups):
    """Run the items of every group in one batch and give the results back per group: `run` gets the
    flat list of all items (flatten) and returns one result per item, in order; the results come back
    as one slice of them per group, in the groups' order. A group may be empty; `run` is not called
    when every group is. One batch because each call is costly to start (an executor round trip, a
    decoding batch, a collective), and the items of one call are independent."""
    flat = flatten(groups)
    results = run(flat) if flat else []
    per_group = []
    start = 0
    for group in groups:
        per_group.append(results[start:start + len(group)])
        start += len(group)
    return per_group
