"""The OS isolation of the executor: what a sandboxed child enters before any model-written code runs, and the
forker that makes the children. Standard library only: executor_worker.py loads this file by path in the
`python -S` workers (see executor.py for the three processes of a call).

The child enters a fresh PID, mount and IPC namespace (plus the forker's empty network namespace) and a
memory cgroup, mounts private tmpfs over every world-writable directory, sets rlimits, drops to an
unprivileged uid, and only then runs the program. The worker enforces the wall clock; the forker then kills
the child, and killing the init of a PID namespace kills everything inside it, so nothing outlives a call.
Where the OS refuses namespaces or cgroups, the forker falls back to what it may (`_probe`; the trainer sees
what it got in `Executor.sandbox`).

The forker is forked by the worker before the worker reads any call, and reads nothing but the worker's
one-word commands, so the memory a child starts with holds no call's data. What the child runs once it is
inside (the job it reads from the worker) is the worker's `child_main`, which `start_forker` is given.
"""
import contextlib
import ctypes
import fcntl
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

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
# threading and subprocess are banned statically; a program that gets past that check (__import__('thre' +
# 'ading')) meets the sandbox's limits rather than an unreadable file, as the tests of those limits expect.
PRELOADED = ("heapq", "bisect", "itertools", "functools", "operator", "re", "string", "math", "cmath",
             "fractions", "decimal", "statistics", "copy", "typing", "enum", "numbers", "array",
             "textwrap", "unicodedata", "struct", "json", "dataclasses", "collections.abc", "locale",
             "threading", "subprocess")
SETUP_FAILED = 113  # child exit code: the sandbox could not be entered, no user code ran
_libc = ctypes.CDLL(None, use_errno=True)


def syscall(name, *args):
    if getattr(_libc, name)(*args) != 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")


def _mount(source, target, fstype, flags, data=None):
    syscall("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
         ctypes.c_ulong(flags), data and data.encode())


def enter_sandbox(cfg, features, uid, workdir, job_r, out_w, res_w):
    """In the forked child, before any model-written code: isolate, limit, drop privileges."""
    os.setsid()
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")  # an out-of-memory kill takes this call's processes, not the forker
    if features["mount_ns"]:
        # A copy of the forker's mount namespace, where every mount is already private (see _probe): our
        # mounts cannot propagate to the host.
        syscall("unshare", CLONE_NEWNS | CLONE_NEWIPC)
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
    syscall("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot regain root
    syscall("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # forker gone -> child gone
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"})
    sys.setrecursionlimit(1000)


def _private_mounts():
    """A mount namespace of the forker's own in which every mount is private, so that nothing mounted here
    or in a child's copy of it reaches the host."""
    syscall("unshare", CLONE_NEWNS)
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
        features["net_ns"] = _granted(syscall, "unshare", CLONE_NEWNET)  # forker and children: loopback only, down
        features["pid_ns"] = _granted(syscall, "unshare", CLONE_NEWPID)  # applies to the forker's children
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
        syscall("setns", features["pidns_fd"], CLONE_NEWPID)  # back to the forker's own namespace, then
        syscall("unshare", CLONE_NEWPID)  # a fresh one for the next child
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
            enter_sandbox(cfg, features, cfg["uid"], workdir, null, null, null)
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


def _start_child(commands, cfg, features, child_main):
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
        child_main(cfg, features, workdir, job_r, out_w, res_w)
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


def _serve_calls(commands, cfg, features, child_main):
    """Hand the worker a child for each call before the call comes (fork and sandbox setup are off the call's
    path); at the worker's command after the call, kill and reap that child and everything it started (and
    answer "status" with its wait status). With a PID namespace per child, the next child is forked while the
    current one runs, so ending one call overlaps the next. Without, the cleanup kills every process of the
    sandbox uid, which a waiting child shares, so the next child is forked only after it. Returns once the
    worker has gone."""
    fork_ahead = features["pid_ns"]
    current = _start_child(commands, cfg, features, child_main)
    while True:
        upcoming = None
        if fork_ahead:
            upcoming = _start_child(commands, cfg, features, child_main)
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
            current = _start_child(commands, cfg, features, child_main)


def _forker_main(commands, cfg, child_main):
    """Probe the sandbox, tell the worker what it got, then serve one call after another until the worker goes."""
    syscall("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # worker gone -> forker gone
    syscall("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a program come back to us, not init
    for name in PRELOADED:
        __import__(name)
    features = _probe(cfg)
    granted = {name: bool(features[name]) for name in ("root", "net_ns", "pid_ns", "mount_ns", "memory_cgroup")}
    commands.send(json.dumps(granted).encode())
    _serve_calls(commands, cfg, features, child_main)
    if features["memory_cgroup"]:
        _remove_memory_cgroup(features["memory_cgroup"])


def start_forker(cfg, worker_fds, child_main):
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
            _forker_main(forker_end, cfg, child_main)
        except BaseException:  # noqa: BLE001 - report why on stderr; the worker sees the socket close
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    forker_end.close()
    return pid, worker_end
