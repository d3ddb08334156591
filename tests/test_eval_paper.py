"""eval.py, the paper's Table 1: EvalPlus (HumanEval+, MBPP+), LiveCodeBench and the six math sets, scored
from answer files: reference answers score 100%, answers that are wrong (trivial bodies, answers of other
problems, hostile expressions) score about 0, and the suite prints the table with its averages."""
import json
import os
import shutil

import pytest

import eval as ev
from evals import evalplus, livecodebench, math_sets
from evals.common import AZR_SYSTEM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
SHIPPED = os.path.join(REPO, "..", "shared", "data", "eval")
needs_shipped = pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "MbppPlus.jsonl")),
                                   reason="../shared/data/eval is absent")
HUMANEVAL_PLUS = os.path.join(DATA, "humanevalplus-tiny.jsonl")
LCB = os.path.join(DATA, "livecodebench-tiny")
OLYMPIAD = os.path.join(DATA, "olympiadbench-tiny.jsonl")


def read(path):
    return [json.loads(line) for line in open(path)]


def score_file(tmp_path, bench, data, generations, *extra):
    """main() on answers written to a file (JSONL for a list of samples, JSON for a dict); the results JSON."""
    answers = tmp_path / "answers.json"
    if isinstance(generations, dict):
        answers.write_text(json.dumps(generations))
    else:
        answers.write_text("\n".join(json.dumps(g) for g in generations))
    out = tmp_path / "results.json"
    ev.main(["--bench", bench, "--data", data, "--generations", str(answers), "--out", str(out),
             "--cache-dir", str(tmp_path / "cache"), *extra])
    return json.loads(out.read_text())["benchmarks"][bench]


# ------------------------------------------------------------------------- the sandbox's run_stdio op

def test_run_stdio_feeds_stdin_and_returns_the_whole_stdout():
    from executor import Executor
    with Executor(workers=2, timeout_s=10, banned_modules=()) as pool:
        calls = [
            ("run_stdio", "n = int(input())\nprint(n * 2)", "21\n", 5.0),
            ("run_stdio", "import sys\nprint(sys.stdin.buffer.read().decode().upper(), end='')", "abc", 5.0),
            ("run_stdio", "print(open(0).read().count('x'))", "x x x\n", 5.0),
            ("run_stdio", "print('y' * 100_000)", "", 5.0),  # far beyond the 2 KB kept of other ops' output
            ("run_stdio", "print('before')\nraise SystemExit(3)", "", 5.0),  # judges read the output anyway
            ("run_stdio", "print('partial')\n1 / 0", "", 5.0),
            ("run_stdio", "while True:\n    pass", "", 0.5),  # the call's own wall clock, below the pool's
            ("run_stdio", "print('z' * 9_000_000)", "", 5.0),  # more than one reply carries
            ("run_stdio", "print(1)", "", "5"),  # a malformed call is an error, not a crash
        ]
        results = pool.run_batch(calls)
    assert [r.status for r in results] == ["ok", "ok", "ok", "ok", "ok", "error", "timeout", "too_long", "error"]
    assert results[0].output == "42\n"
    assert results[1].output == "ABC"
    assert results[2].output == "3\n"
    assert results[3].output == "y" * 100_000 + "\n"
    assert results[4].output == "before\n"
    assert results[5].output == "partial\n"
    assert "ZeroDivisionError" in results[5].message


# ------------------------------------------------------------------------------------------ EvalPlus

def test_humaneval_plus_reference_completions_pass(tmp_path):
    samples = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in read(HUMANEVAL_PLUS)]
    result = score_file(tmp_path, "humaneval+", HUMANEVAL_PLUS, samples)
    assert result["pass@1"] == 100.0
    assert result["base pass@1"] == 100.0


def test_humaneval_plus_oracles_and_failures(tmp_path):
    samples = [
        # mean: within atol of the reference (the float oracle), as a whole `solution`
        {"task_id": "HumanEval/0", "solution": "def mean(xs):\n    return sum(xs) / len(xs) * (1 + 1e-12)\n"},
        # find_zero: a different root of x^3 - 6x^2 + 11x - 6 than the reference's passes (|p(x)| <= atol)
        {"task_id": "HumanEval/32", "completion": "    return 3.0 if len(xs) == 4 else -0.5 if xs == [1, 2] else 2 ** 0.5\n"},
        # evens: right on the base inputs only (fails n=1: returns [])
        {"task_id": "HumanEval/2", "completion": "    return [] if n < 2 else list(range(0, n, 2))\n"},
    ]
    result = score_file(tmp_path, "humaneval+", HUMANEVAL_PLUS, samples)
    assert result["base scores"] == {"HumanEval/0": [True], "HumanEval/32": [True], "HumanEval/2": [True]}
    assert result["scores"] == {"HumanEval/0": [True], "HumanEval/32": [True], "HumanEval/2": [False]}
    wrong = [
        {"task_id": "HumanEval/0", "completion": "    return sum(xs) / len(xs) + 1e-3\n"},  # outside atol
        {"task_id": "HumanEval/32", "completion": "    return 10.0\n"},  # not a root
        {"task_id": "HumanEval/2", "completion": "    return tuple(range(0, n, 2))\n"},  # a tuple is not a list
    ]
    assert score_file(tmp_path, "humaneval+", HUMANEVAL_PLUS, wrong)["base pass@1"] == 0.0


def test_evalplus_time_limit_from_the_reference_time(tmp_path, monkeypatch):
    monkeypatch.setattr(evalplus, "EVALPLUS_MIN_TIME_LIMIT_S", 0.5)  # so the test waits half a second, not ten
    samples = [{"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"},
               {"task_id": "HumanEval/32", "completion": "    print('noise')\n    return 3.0 if len(xs) == 4 else -0.5\n"},
               {"task_id": "HumanEval/2", "completion": "    import time\n    time.sleep(0.1)\n    return list(range(0, n, 2))\n"}]
    result = score_file(tmp_path, "humaneval+", HUMANEVAL_PLUS, samples)
    assert result["base scores"] == {"HumanEval/0": [False], "HumanEval/32": [True], "HumanEval/2": [True]}


@needs_shipped
def test_mbpp_plus_first_problems(tmp_path):
    """The first 40 MBPP+ problems: references pass base and plus, `return None` bodies do not."""
    data = os.path.join(SHIPPED, "MbppPlus.jsonl")
    records = read(data)
    reference = [{"task_id": r["task_id"], "solution": r["prompt"] + r["canonical_solution"]} for r in records]
    result = score_file(tmp_path, "mbpp+", data, reference, "--limit", "40")
    assert result["problems"] == 40
    assert result["pass@1"] == 100.0
    assert result["base pass@1"] == 100.0
    trivial = [{"task_id": r["task_id"], "solution": f"def {r['entry_point']}(*args):\n    return None\n"}
               for r in records]
    assert score_file(tmp_path, "mbpp+", data, trivial, "--limit", "40")["pass@1"] < 5.0


@pytest.mark.slow
@needs_shipped
def test_mbpp_plus_all_reference_solutions_pass(tmp_path, monkeypatch):
    """All 378 problems, every base and plus input. EvalPlus' 60 s cap on one run is lifted: on a busy
    machine the slowest references (Mbpp/599: 25 CPU seconds) would otherwise time out; the cap itself is
    tested above on a fixture."""
    monkeypatch.setattr(evalplus, "EVALPLUS_RUN_LIMIT_S", 500.0)
    data = os.path.join(SHIPPED, "MbppPlus.jsonl")
    records = read(data)
    reference = [{"task_id": r["task_id"], "solution": r["prompt"] + r["canonical_solution"]} for r in records]
    result = score_file(tmp_path, "mbpp+", data, reference)
    assert result["problems"] == 378
    assert result["base pass@1"] == 100.0
    assert result["pass@1"] == 100.0
    trivial = [{"task_id": r["task_id"], "solution": f"def {r['entry_point']}(*args):\n    return None\n"}
               for r in records]
    trivial_result = score_file(tmp_path, "mbpp+", data, trivial)
    assert trivial_result["pass@1"] < 5.0
    assert trivial_result["base pass@1"] < 5.0


@pytest.mark.parametrize("expected, outputs, passed", [
    (["1.5", "[1, 2]"], ["1.5", "[1, 2]"], True),  # every text the expected one: no value rebuilt
    (["1.5", "[1, 2]"], ["1.5", "[1.0000001, 2]"], True),  # the tolerance the first float output switched on
    (["1", "[1, 2]"], ["1", "[1.0000001, 2]"], False),  # no float output before: exact equality
    (["1.5", "[1, 2]"], ["1.5", "[1.1, 2]"], False),
])
def test_evalplus_verdict_without_rebuilding_same_texts(expected, outputs, passed):
    problem = {"entry_point": "g", "atol": 0}
    assert evalplus.evalplus_passed("mbpp+", problem, [[0], [0]], expected, outputs) is passed


def test_evalplus_same_nan_text_is_not_a_pass():
    problem = {"entry_point": "g", "atol": 0}
    assert evalplus.evalplus_passed("mbpp+", problem, [[0]], ["nan"], ["nan"]) is False
    assert evalplus.evalplus_passed("mbpp+", problem, [[0]], ["[1, 2]"], ["[1, 2]"]) is True


def test_mbpp_input_shapes_reach_the_function(tmp_path):
    """MBPP+ inputs are JSON lists; the driver rebuilds the tuples EvalPlus passes (Mbpp/2: two tuples)."""
    problem = {"task_id": "Mbpp/2", "prompt": "", "entry_point": "similar_elements", "atol": 0,
               "canonical_solution": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
               "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[], []]]}
    data = tmp_path / "mbpp.jsonl"
    data.write_text(json.dumps(problem))
    checks_types = "def similar_elements(a, b):\n    assert type(a) is tuple and type(b) is tuple\n    return [5, 4]\n"
    result = score_file(tmp_path, "mbpp+", str(data), [{"task_id": "Mbpp/2", "solution": checks_types}])
    assert result["base scores"] == {"Mbpp/2": [True]}  # a list in any order: Mbpp/2 compares as sets
    assert result["scores"] == {"Mbpp/2": [False]}  # [5, 4] for two empty tuples


# ------------------------------------------------------------------------------------- LiveCodeBench

LCB_RIGHT = {"abc001_a": ["import sys\nn = int(input())\nprint(sum(map(int, sys.stdin.read().split())))"],
             "1900A": ["print(int(input()) / 2)"],
             "3001": ["class Solution:\n    def addLists(self, a: List[int], b: List[int]) -> List[int]:\n"
                      "        print('its own print is not its answer')\n"
                      "        return tuple(x + y for x, y in zip(a, b))\n"]}


def test_livecodebench_right_answers_pass(tmp_path):
    result = score_file(tmp_path, "livecodebench", LCB, LCB_RIGHT)
    assert result["problems"] == 3  # abc400_a (2025-04) lies after the paper's window
    assert result["scores"] == {"abc001_a": [True], "1900A": [True], "3001": [True]}


def test_livecodebench_wrong_answers_fail(tmp_path):
    wrong = {"abc001_a": ["print(6)"],  # passes the public test, fails the encoded private ones
             "1900A": ["print(int(input()) // 2)"],  # 1 for 3: not 1.5
             "3001": ["class Solution:\n    def addLists(self, a, b):\n        return a + b\n"]}
    result = score_file(tmp_path, "livecodebench", LCB, wrong)
    assert result["scores"] == {"abc001_a": [False], "1900A": [False], "3001": [False]}


def test_livecodebench_window_flags(tmp_path):
    answers = dict(LCB_RIGHT, abc400_a=["print(1)"])
    result = score_file(tmp_path, "livecodebench", LCB, answers, "--lcb-start", "2024-01-01", "--lcb-end", "2025-12-31")
    assert sorted(result["scores"]) == ["1900A", "3001", "abc400_a"]  # abc001_a's answer is not scored
    assert result["pass@1"] == 100.0


@pytest.mark.parametrize("output, expected, passed", [
    ("6\n", "6", True), ("  1 2 3  \n\n", "1 2 3\n", True), ("2.0\n", "2.000\n", True), ("1.5 2\n", "1.50 2.0", True),
    ("6\n7\n", "6\n", False), ("1.5\n", "1.4999\n", False), ("abc\n", "ABC\n", False), ("", "0\n", False),
])
def test_livecodebench_stdout_rule(output, expected, passed):
    assert livecodebench.lcb_stdout_passed(output, expected) == passed


# ---------------------------------------------------------------------------------------------- math

MATH_SETS = {"aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl", "math500": "math500.jsonl",
             "minerva": "minerva_math.jsonl", "olympiadbench": "olympiadbench.jsonl"}


def record_ids(bench, path):
    return list(ev.BENCHMARKS[bench].load(path, None))


# The three large sets take minutes (math-verify gives up on some shifted answers only after its 5 s timeout).
MATH_SET_PARAMS = [pytest.param(bench, marks=pytest.mark.slow) if bench in ("math500", "minerva", "olympiadbench")
                   else bench for bench in MATH_SETS]


@needs_shipped
@pytest.mark.parametrize("bench", MATH_SET_PARAMS)
def test_math_gold_answers_pass_and_shifted_answers_fail(tmp_path, bench):
    """\\boxed{gold} scores 100% on every set; the gold of the next problem scores only where the two golds
    are the same text (AMC23 and MATH500 repeat a few answers)."""
    path = os.path.join(SHIPPED, MATH_SETS[bench])
    problems = ev.BENCHMARKS[bench].load(path, None)
    ids = list(problems)
    golds = [math_sets.math_gold(bench, problems[pid]) for pid in ids]
    assert all(golds)
    gold_answers = {pid: [f"<think>...</think><answer>\\boxed{{{gold}}}</answer>"] for pid, gold in zip(ids, golds)}
    assert score_file(tmp_path, bench, path, gold_answers)["pass@1"] == 100.0
    shifted = {}
    same_text = 0
    for i, pid in enumerate(ids):
        other = golds[(i + 1) % len(ids)]
        shifted[pid] = [f"\\boxed{{{other}}}"]
        same_text += other.replace(" ", "") == golds[i].replace(" ", "")
    result = score_file(tmp_path, bench, path, shifted)
    assert result["pass@1"] <= 100.0 * (same_text + 0.01 * len(ids)) / len(ids)


def test_olympiadbench_units_and_multiple_answers(tmp_path):
    right = {"1": ["<think>area</think><answer>\\boxed{166 cm^2}</answer>"],  # the record's unit is dropped
             "2": ["so the answer is \\boxed{5, 3, 1}"],  # several answers in any order
             "3": ["\\boxed{\\frac{600}{7}\\text{ km/h}}"]}
    assert score_file(tmp_path, "olympiadbench", OLYMPIAD, right)["pass@1"] == 100.0
    wrong = {"1": ["\\boxed{167}"], "2": ["\\boxed{1, 3}"], "3": ["\\boxed{\\frac{7}{600}}"]}
    assert score_file(tmp_path, "olympiadbench", OLYMPIAD, wrong)["pass@1"] == 0.0


def test_hostile_math_answer_is_wrong_not_hung(tmp_path):
    """A tower of powers makes sympy compute for ever; the judge runs in the sandbox, so it is only wrong."""
    answers = {"60": ["\\boxed{9^{9^{9^{9^{9}}}}}"], "61": ["\\boxed{2.5}"]}
    result = score_file(tmp_path, "aime24", os.path.join(DATA, "aime-tiny.jsonl"), answers)
    assert result["scores"] == {"60": [False], "61": [True]}


@pytest.mark.parametrize("response, prediction", [
    ("<think>x</think> <answer>The answer is \\boxed{\\frac{1}{2}}.</answer>", "\\frac{1}{2}"),
    ("<answer> 42 </answer>", "42"),
    ("no tags, but \\boxed{7} and later \\boxed{8}", "8"),
    ("display \\[ x = 3 \\] only", "x = 3"),
    ("nothing at all", ""),
])
def test_math_prediction_extraction(response, prediction):
    assert math_sets.math_prediction(response) == prediction


# --------------------------------------------------------------------------------------------- suite

def paper_dir(tmp_path):
    """A --data-dir with HumanEval+, LiveCodeBench and AIME24 (fixtures under the paper's names)."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(HUMANEVAL_PLUS, data / "HumanEvalPlus.jsonl")
    shutil.copytree(LCB, data / "livecodebench")
    shutil.copy(os.path.join(DATA, "aime-tiny.jsonl"), data / "aime24.jsonl")
    return data


def test_suite_from_generations_dir(tmp_path, capsys):
    data = paper_dir(tmp_path)
    answers = tmp_path / "answers"
    answers.mkdir()
    samples = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in read(HUMANEVAL_PLUS)]
    (answers / "humaneval+.jsonl").write_text("\n".join(json.dumps(s) for s in samples))
    (answers / "livecodebench.json").write_text(json.dumps(LCB_RIGHT))
    (answers / "aime24.json").write_text(json.dumps({"60": ["\\boxed{42}"], "61": ["\\boxed{3}"]}))
    out = tmp_path / "table.json"
    ev.main(["--suite", "paper", "--data-dir", str(data), "--generations-dir", str(answers), "--out", str(out),
             "--cache-dir", str(tmp_path / "cache")])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["benchmarks"]["humaneval+"]["pass@1"] == 100.0
    assert report["benchmarks"]["livecodebench"]["pass@1"] == 100.0
    assert report["benchmarks"]["aime24"]["pass@1"] == 50.0
    assert report["averages"]["code"] == 100.0  # over the two code sets that ran
    assert report["averages"]["math"] == 50.0
    assert report["averages"]["overall"] == 75.0
    assert sorted(report["missing"]) == ["aime25", "amc23", "math500", "mbpp+", "minerva", "olympiadbench"]
    assert "| HEval+ | MBPP+ | LCB | AIME24 |" in table
    assert "| 100.0 | - | 100.0 | 50.0 | - | - | - | - | - | 100.0* | 50.0* | 75.0* |" in table
    assert "not run: mbpp+" in table
    assert f"contests {ev.LCB_START} .. {ev.LCB_END}" in table


def test_suite_with_a_model_and_limit(tmp_path, tiny_checkpoint, capsys):
    """Generate mode end to end with a tiny random model: one problem per set, a few tokens."""
    data = paper_dir(tmp_path)
    out = tmp_path / "table.json"
    ev.main(["--suite", "paper", "--data-dir", str(data), "--model", str(tiny_checkpoint), "--limit", "1",
             "--max-new-tokens", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    report = json.loads(out.read_text())
    assert report["limit"] == 1
    for bench in ("humaneval+", "livecodebench", "aime24"):
        assert report["benchmarks"][bench]["problems"] == 1
        assert len(report["benchmarks"][bench]["responses"]) == 1
    assert "first 1 problems of each benchmark only (--limit 1)" in capsys.readouterr().out


def test_prompts_follow_the_authors_scripts():
    problem = read(HUMANEVAL_PLUS)[0]
    prompt = evalplus.evalplus_prompt(problem)
    assert prompt.startswith(AZR_SYSTEM + "Please provide an efficient and self-contained Python script")
    assert prompt.endswith("```\nAssistant: <think>\n```python\n")
    assert ev.BENCHMARKS["humaneval+"].answer("def mean(xs):\n    return 1\nprint(mean([1]))\n```\ntrailing") == \
        "def mean(xs):\n    return 1"
    lcb = livecodebench.load_livecodebench(LCB, livecodebench.LCB_START, livecodebench.LCB_END)
    assert livecodebench.lcb_prompt(lcb["3001"]).endswith("```\n\nAssistant: <think>")
    assert "Read the inputs from stdin" in livecodebench.lcb_prompt(lcb["abc001_a"])
    assert livecodebench.lcb_code("<answer>```python\nprint(1)\n```</answer>") == "print(1)\n"
    assert math_sets.math_prompt("aime24", {"problem": "What is 6 times 7?", "answer": "42"}).endswith(
        "User: What is 6 times 7?\nAssistant:")
    assert math_sets.math_question("amc23", {"question": "Is 2 prime?", "answer": "Yes"}) == "Is 2 prime? (Yes or No)"


@pytest.mark.parametrize("argv, message", [
    (["--suite", "paper", "--generations-dir", "."], "--suite needs --data-dir"),
    (["--bench", "mbpp+", "--suite", "paper", "--data-dir", ".", "--generations", "x"], "exactly one of"),
    (["--suite", "paper", "--data-dir", ".", "--generations-dir", ".", "--limit", "0"], "--limit must be >= 1"),
    (["--suite", "paper", "--data-dir", ".", "--generations-dir", ".", "--lcb-end", "May"], "must be a date YYYY-MM-DD"),
    (["--bench", "math", "--data", ".", "--generations", "x", "--limit", "2"], "--limit is for --suite"),
])
def test_suite_flag_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        ev.main(argv)
    assert message in capsys.readouterr().err
