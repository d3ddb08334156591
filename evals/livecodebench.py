"""LiveCodeBench (code_generation_lite), as the paper's Table 1 runs it: the authors' AZR prompt, the contest
window of the paper (release_v5), and the harness' verdict (every public and private test passes, stdout
compared line by line, functional problems by their JSON result). Programs run in the sandbox; the private
tests are decoded there too (drivers/lcb_decoder.py), and cached."""
import json
import os
import re

from tqdm import tqdm

from evals.common import (AZR_SYSTEM, STDIO_SANDBOX, Benchmark, fail, flatten, load_cache, read_driver, read_jsonl,
                          regroup, run_stdio_calls, save_cache, text_digest)

MAX_NEW_TOKENS = 8096  # the authors' run_lcb_gen.sh

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

LCB_DECODER = read_driver("lcb_decoder.py")  # decodes the private tests in the sandbox
DECODE_TIMEOUT_S = STDIO_SANDBOX.timeout_s  # the pool's longest clock: a blob can hold hundreds of tests
LCB_CALL = read_driver("lcb_call.py")  # calls a functional (LeetCode) solution's method


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
    calls = [(LCB_DECODER, json.dumps({"blob": blob, "start": 0, "stop": None}), DECODE_TIMEOUT_S) for blob in todo]
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
    count_call = ("run_stdio", LCB_DECODER, json.dumps({"blob": blob, "start": 0, "stop": 0}), DECODE_TIMEOUT_S)
    count = json.loads(executor.run_batch([count_call])[0].output)["count"]
    calls = []
    for i in range(count):
        request = json.dumps({"blob": blob, "start": i, "stop": i + 1})
        calls.append(("run_stdio", LCB_DECODER, request, DECODE_TIMEOUT_S))
    tests = []
    for result in executor.run_batch(calls):
        if result.status != "ok":
            fail(f"cannot decode a LiveCodeBench private test: {result.status} {result.message}")
        tests.extend(json.loads(result.output)["tests"])
    return tests


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
    call = f"{LCB_CALL}\n_lcb_call({name!r}, {test['input']!r})\n"
    return (LCB_PRELUDE + code + "\n" + call, "", LCB_TIMEOUT_S + 1)


def score_livecodebench(problems, generations, executor, cache_dir):
    """{question_id: [passed? per answer]}: an answer passes when it passes every public and private test.
    Tests run in rounds (test k of every answer still passing), so an answer stops at its first failure, as
    in the harness, while the sandbox stays busy with all answers."""
    tests = lcb_tests(problems, executor, cache_dir)
    items = flatten(generations)
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
    return regroup(items, passed, generations)


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


def score(problems, answers, executor, options):
    """{"scores", "contests"}: the window the problems were drawn from goes into the report."""
    return {"scores": score_livecodebench(problems, answers, executor, options.cache_dir),
            "contests": [options.lcb_start, options.lcb_end]}


LIVECODEBENCH = Benchmark(
    load=lambda path, options: load_livecodebench(path, options.lcb_start, options.lcb_end),
    prompt=lcb_prompt,
    wraps_prompt=False,
    answer=lcb_code,
    score=score,
    max_new_tokens=MAX_NEW_TOKENS,
    sandbox=STDIO_SANDBOX,
    subset=True,
)
