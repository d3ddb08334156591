"""The six math sets of the paper's Table 1 (AIME24, AIME25, AMC23, MATH500, Minerva, OlympiadBench), as the
authors' math_eval runs them: their `azr` prompt and answer extraction, judged by math-verify in the sandbox
(drivers/math_judge.py: sympy evaluates what it parses, so a hostile answer can only be wrong, never hang
the evaluator)."""
import importlib.util
import json
import re

from evals.common import (AZR_SYSTEM, STDIO_SANDBOX, Benchmark, fail, flatten, load_records, read_driver, regroup,
                          run_stdio_calls)
from evals.math_gsm8k import last_boxed

MAX_NEW_TOKENS = 16000  # the authors' eval_math_nodes.sh
# The record fields of each set's file, as the authors' repository ships them.
FIELDS = {"aime24": ("problem", "answer"), "aime25": ("problem", "answer"), "amc23": ("question", "answer"),
          "math500": ("problem", "answer"), "minerva": ("problem", "solution"),
          "olympiadbench": ("question", "final_answer")}

MATH_JUDGE_CHUNK = 32  # answers per sandbox call: one import of math-verify serves them all
MATH_JUDGE_TIMEOUT_S = 60.0  # per chunk; a chunk that fails is re-judged one answer per call
MATH_SINGLE_TIMEOUT_S = 20.0  # one answer; past this it is wrong (a hostile power cannot hang the evaluator)

MATH_JUDGE = read_driver("math_judge.py")  # math-verify, in the sandbox


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
    items = flatten(generations)
    judged = []
    for pid, response in items:
        problem = problems[pid]
        unit = str(problem.get("unit") or "") if bench == "olympiadbench" else ""
        judged.append({"pred": math_prediction(response), "gold": math_gold(bench, problem), "unit": unit})
    return {"scores": regroup(items, judge_math(judged, executor, f"{bench} judging"), generations)}


def load(path, name):
    if importlib.util.find_spec("math_verify") is None:
        fail("the math benchmarks need math-verify: pip install -r requirements.txt")
    return load_records(path, name, FIELDS[name])


def benchmark(name):
    return Benchmark(
        load=lambda path, options: load(path, name),
        prompt=lambda problem: math_prompt(name, problem),
        wraps_prompt=False,
        answer=lambda response: response,  # whole: the judge extracts the answer
        score=lambda problems, answers, executor, options: score_math_set(name, problems, answers, executor),
        max_new_tokens=MAX_NEW_TOKENS,
        sandbox=STDIO_SANDBOX,
    )


AIME24 = benchmark("aime24")
AIME25 = benchmark("aime25")
AMC23 = benchmark("amc23")
MATH500 = benchmark("math500")
MINERVA = benchmark("minerva")
OLYMPIADBENCH = benchmark("olympiadbench")
