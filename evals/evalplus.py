"""HumanEval+ and MBPP+ (EvalPlus), as the paper's Table 1 runs them: the authors' `azr` prompt, and EvalPlus'
verdicts (base and plus inputs, time limits from the canonical solution's times, float tolerance, MBPP+'s
input shapes and special oracles). Programs run in the sandbox through drivers/evalplus.py; expected outputs
stay out of it, computed once per data file and cached."""
import json
import math
import os
import re

from evals.common import (AZR_SYSTEM, STDIO_SANDBOX, Benchmark, fail, file_digest, flatten, load_cache, load_records,
                          read_driver, regroup, run_stdio_calls, save_cache)

FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
MAX_NEW_TOKENS = 768  # evalplus.codegen's default, which the authors' run_evalplus.sh keeps

# The authors' run_evalplus.sh passes --min-time-limit 10 --gt-time-limit-factor 8 to evalplus.evaluate: each
# input may take max(10 s, 8 x the canonical solution's time on it). EvalPlus gives one run of all inputs
# min(60 s (EVALPLUS_TIMEOUT_PER_TASK), their sum) + 1 s, and waits 1 s more for the process.
EVALPLUS_MIN_TIME_LIMIT_S = 10.0
EVALPLUS_TIME_FACTOR = 8.0
EVALPLUS_RUN_LIMIT_S = 60.0
# MBPP+ inputs are JSON; EvalPlus turns the lists of these tasks back into the tuples, sets and complex numbers
# the functions take (evalplus/data/mbpp.py). Shape name -> task numbers; drivers/evalplus.py applies the shape.
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

EVALPLUS_DRIVER = read_driver("evalplus.py")  # runs in the sandbox: its docstring says what it reads and writes


def load_evalplus(path, bench):
    """{task_id: record} of an EvalPlus file (HumanEvalPlus.jsonl[.gz] or MbppPlus.jsonl), inputs as lists."""
    problems = load_records(path, bench, FIELDS)
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
            calls.append((EVALPLUS_DRIVER, request, STDIO_SANDBOX.timeout_s))
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
    """{"scores", "base scores"}: per problem, per answer, whether it passes base and plus inputs (the number
    the paper reports), and whether it passes the base inputs. Base and plus are separate runs with separate
    time budgets, as in EvalPlus."""
    expected = evalplus_expected(bench, path, problems, executor, cache_dir)
    items = flatten(generations)
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
    base = []
    plus = []
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
        base.append(passed["base"])
        plus.append(passed["base"] and passed["plus"])
    return {"scores": regroup(items, plus, generations), "base scores": regroup(items, base, generations)}


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




def answer(response):
    """The code the prompt's open ```python fence received (up to the fence's end), sanitized."""
    return sanitize_code(response.split("```")[0])


def benchmark(name):
    return Benchmark(
        load=lambda path, options: load_evalplus(path, name),
        prompt=evalplus_prompt,
        wraps_prompt=False,
        answer=answer,
        score=lambda problems, answers, executor, options: score_evalplus(name, options.data, problems, answers,
                                                                          executor, options.cache_dir),
        max_new_tokens=MAX_NEW_TOKENS,
        sandbox=STDIO_SANDBOX,
    )


HUMANEVAL_PLUS = benchmark("humaneval+")
MBPP_PLUS = benchmark("mbpp+")
