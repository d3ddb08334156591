"""eval.py: pass@k against hand-computed and math.comb values, math normalisation, and every benchmark
scored from gold answers (100%), answers shuffled between problems (about 0%) and known-wrong answers,
plus the generate mode end to end with a tiny random model."""
import json
import math
import os
import subprocess
import sys
import types

import pytest

import eval as ev
from evals import cruxeval, math_gsm8k
from evals.common import SCRIPT_SANDBOX, start_sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")
CRUX = os.path.join(REPO, "data", "cruxeval-50.jsonl")
needs_crux = pytest.mark.skipif(not os.path.isfile(CRUX), reason="data/cruxeval-50.jsonl is absent")


def run_eval(tmp_path, bench, data, generations, *extra):
    """main() on a generations object written to a file; returns the benchmark's entry of the report read back."""
    gen_path = tmp_path / "generations.json"
    gen_path.write_text(json.dumps(generations) if isinstance(generations, dict)
                        else "\n".join(json.dumps(g) for g in generations))
    out = tmp_path / "results.json"
    ev.main(["--bench", bench, "--data", data, "--generations", str(gen_path), "--out", str(out), *extra])
    return json.loads(out.read_text())["benchmarks"][bench]


def read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def executor():
    pool = start_sandbox(SCRIPT_SANDBOX)
    yield pool
    pool.close()


# ------------------------------------------------------------------------------------------ pass@k

def test_pass_at_k_hand_computed():
    assert ev.pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert ev.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert ev.pass_at_k(7, 1, 5) == pytest.approx(1 - 6 / 21)  # 1 - C(6,5)/C(7,5)
    assert ev.pass_at_k(6, 2, 5) == 1.0  # every 5-subset holds a correct answer
    assert ev.pass_at_k(5, 0, 5) == 0.0
    assert ev.pass_at_k(4, 4, 5) is None  # fewer answers than k: not reported
    for n in range(1, 12):
        for c in range(n + 1):
            for k in (1, 5):
                if n >= k:
                    assert ev.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_percent():
    scores = [[True, False, False, False, False], [True] * 5, [False] * 5, [False, True, False, True, False]]
    assert ev.pass_at_k_percent(scores, 1) == pytest.approx(100 * (0.2 + 1 + 0 + 0.4) / 4)
    assert ev.pass_at_k_percent(scores, 5) == pytest.approx(75.0)
    assert ev.pass_at_k_percent([[True], [False]], 1) == 50.0
    assert ev.pass_at_k_percent([[True], [False]], 5) is None


# -------------------------------------------------------------------------------------------- math

@pytest.mark.parametrize("prediction, gold", [
    ("\\frac{1}{2}", "1/2"), ("\\dfrac{1}{2}", "0.5"), ("\\tfrac12", "\\frac{1}{2}"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("(0.5, 1)", "\\left(\\frac{1}{2}, 1\\right)"),
    ("5.0", "5"), ("2.00", "2"), ("$5$", "5"), ("\\$5", "5"), ("10\\%", "10"), ("90^\\circ", "90"),
    ("\\text{Evelyn}", "Evelyn"), ("\\text{(C)}", "(C)"), ("5\\text{ cm}", "5"), ("x = 3", "3"),
    ("1,000", "1000"), ("2\\!000", "2000"), ("0.33333", "\\frac{1}{3}"), ("\\frac{-1}{2}", "-0.5"),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"), ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"),
    ("\\frac{x+1}{2}", "(x+1)/2"), ("2 \\sqrt{3}", "2\\sqrt{3}"), ("3.", "3"),
])
def test_math_equal(prediction, gold):
    assert math_gsm8k.math_equal(prediction, gold)


@pytest.mark.parametrize("prediction, gold", [
    ("2", "3"), ("0.333", "\\frac{1}{3}"), ("(1,2)", "[1,2]"), ("(1,2)", "(2,1)"), ("x+1", "x-1"),
    ("\\frac{1}{2}", "2"), ("\\sqrt{3}", "\\sqrt{2}"), ("", "0"), ("12", "1,2"),
])
def test_math_not_equal(prediction, gold):
    assert not math_gsm8k.math_equal(prediction, gold)


def test_answer_extraction():
    assert math_gsm8k.last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}} end") == "\\frac{1}{\\sqrt{2}}"
    assert math_gsm8k.last_boxed("\\boxed{x^{2}} and \\fbox{7}") == "7"
    assert math_gsm8k.last_boxed("so $\\boxed 5$.") == "5"
    assert math_gsm8k.last_boxed("\\boxed{unclosed") is None and math_gsm8k.last_boxed("none") is None
    assert math_gsm8k.extract_math_answer("I get 3 then 1,200 in all", "gsm8k") == "1,200"
    assert math_gsm8k.extract_math_answer("work\n#### 72", "gsm8k") == "72"
    assert math_gsm8k.extract_math_answer("<think>7</think><answer>9</answer>", "math") == "9"
    assert math_gsm8k.gold_answer("gsm8k", {"answer": "3*400=1200\n#### 1,200"}) == "1,200"


def test_math_and_gsm8k_scoring(tmp_path):
    math_data = os.path.join(DATA, "math-tiny.jsonl")
    gold = {"tiny/0.json": ["so \\boxed{\\dfrac{1}{2}}"], "tiny/1.json": ["x = \\boxed{3.0}"],
            "tiny/2.json": ["\\boxed{\\left(1, 1\\right)}"], "tiny/3.json": ["\\boxed{2 \\sqrt{3}}"]}
    assert run_eval(tmp_path, "math", math_data, gold)["pass@1"] == 100.0
    ids = list(gold)
    shuffled = {pid: gold[ids[(i + 1) % len(ids)]] for i, pid in enumerate(ids)}
    assert run_eval(tmp_path, "math", math_data, shuffled)["pass@1"] == 0.0
    gsm_data = os.path.join(DATA, "gsm8k-tiny.jsonl")
    answers = {"0": ["That is 1200 pencils.", "#### 1,201"], "1": ["\\boxed{6}"] * 2}
    result = run_eval(tmp_path, "gsm8k", gsm_data, answers)
    assert result["scores"] == {"0": [True, False], "1": [True, True]}
    assert result["pass@1"] == 75.0 and result["pass@5"] is None


# ---------------------------------------------------------------------------------------- CRUXEval

@needs_crux
@pytest.mark.parametrize("bench", ["cruxeval-o", "cruxeval-i"])
def test_cruxeval_gold_and_shuffled(tmp_path, bench):
    problems = read(CRUX)
    answer = (lambda p: p["output"]) if bench == "cruxeval-o" else (lambda p: f"f({p['input']})")
    gold = {p["id"]: [answer(p)] for p in problems}
    result = run_eval(tmp_path, bench, CRUX, gold)
    assert result["pass@1"] == 100.0 and all(s == [True] for s in result["scores"].values())
    ids = list(gold)
    shuffled = {pid: gold[ids[(i + 7) % len(ids)]] for i, pid in enumerate(ids)}
    assert run_eval(tmp_path, bench, CRUX, shuffled)["pass@1"] <= 10.0


@needs_crux
def test_cruxeval_official_rules(executor):
    """The harness's rules on answers it does not take at face value (utils_general.evaluate_score)."""
    p = {q["id"]: q for q in read(CRUX)}["sample_3"]  # f('bcksrut', 'q') == 'bcksrutq'
    outputs = {"sample_3": [
        "'bcksrutq'",                        # right
        f"f({p['input']})",                  # the call itself: wrong although it evaluates right
        "'bcksrutq' # the answer",           # pasted verbatim: a trailing comment is fine
        "'bcksrut'",                         # wrong value
        "the answer is 'bcksrutq'",          # not Python: wrong, no crash
    ]}
    scores = cruxeval.CRUXEVAL_O.score({"sample_3": p}, outputs, executor, None)["scores"]
    assert scores["sample_3"] == [True, False, True, False, False]
    inputs = {"sample_3": [
        "f('bcksrut', 'q')",                 # right
        "f('bcksru', 'tq')",                 # another input that works: right
        "'bcksrut', 'q'",                    # a bare argument list: wrapped as f(...) (issue 6)
        "g('bcksrut', 'q')",                 # another function name: wrong
        "f('bcksrut', 'x')",                 # wrong
        "f('bcksrut', 'q'",                  # does not parse: wrong
        "",                                  # empty: wrong
        "f(" + "'a', " * 3 + ")",            # raises (wrong arity): wrong
    ]}
    scores = cruxeval.CRUXEVAL_I.score({"sample_3": p}, inputs, executor, None)["scores"]
    assert scores["sample_3"] == [True, True, True, False, False, False, False, False]


@needs_crux
def test_cruxeval_timeout_is_wrong(executor):
    problem = {"code": "def f(x):\n    while x:\n        pass\n    return x", "input": "0", "output": "0"}
    scores = cruxeval.CRUXEVAL_I.score({"p": problem}, {"p": ["f(0)", "f(1)"]}, executor, None)["scores"]
    assert scores["p"] == [True, False]


# ----------------------------------------------------------------------------------- HumanEval, MBPP

def test_humaneval_scoring(tmp_path):
    data = os.path.join(DATA, "humaneval-tiny.jsonl")
    samples = [
        {"task_id": "Tiny/0", "completion": "    return a + b\n"},                        # right
        {"task_id": "Tiny/0", "completion": "    return a - b\n"},                        # wrong
        {"task_id": "Tiny/1", "solution": "def double_all(xs):\n    return [double(x) for x in xs]\n"},  # whole
        {"task_id": "Tiny/1", "completion": "    raise ValueError\n"},                    # raises
        {"task_id": "Tiny/2", "completion": "    return sorted(xs) == xs\n"},             # right
        {"task_id": "Tiny/2", "completion": "    return True\n"},                         # wrong
    ]
    result = run_eval(tmp_path, "humaneval", data, samples)
    # Tiny/1's prompt imports typing, as most HumanEval prompts do: the sandbox must import the stdlib.
    assert result["scores"] == {"Tiny/0": [True, False], "Tiny/1": [True, False], "Tiny/2": [True, False]}
    assert result["pass@1"] == 50.0
    gold = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in read(data)]
    assert run_eval(tmp_path, "humaneval", data, gold)["pass@1"] == 100.0
    shuffled = [dict(g, task_id=gold[(i + 1) % len(gold)]["task_id"]) for i, g in enumerate(gold)]
    assert run_eval(tmp_path, "humaneval", data, shuffled)["pass@1"] == 0.0


def test_mbpp_scoring(tmp_path):
    data = os.path.join(DATA, "mbpp-tiny.jsonl")
    problems = read(data)
    gold = {str(p["task_id"]): [p["code"]] for p in problems}
    assert run_eval(tmp_path, "mbpp", data, gold)["pass@1"] == 100.0  # needs test_imports / setup code
    ids = list(gold)
    shuffled = {pid: gold[ids[(i + 1) % len(ids)]] for i, pid in enumerate(ids)}
    assert run_eval(tmp_path, "mbpp", data, shuffled)["pass@1"] == 0.0
    wrong = dict(gold, **{"901": ["def max_of_three(a, b, c):\n    return min(a, b, c)"]})
    assert run_eval(tmp_path, "mbpp", data, wrong)["scores"]["901"] == [False]


# ------------------------------------------------------------------------------------- bad input

def test_bad_input_is_one_line_error(tmp_path):
    data = os.path.join(DATA, "math-tiny.jsonl")
    gen = tmp_path / "g.json"
    gen.write_text(json.dumps({"tiny/0.json": ["1"], "nope": ["2"]}))
    with pytest.raises(SystemExit, match="not problems of the data.*'nope'"):
        ev.main(["--bench", "math", "--data", data, "--generations", str(gen)])
    gen.write_text(json.dumps({"tiny/0.json": ["1"]}))
    with pytest.raises(SystemExit, match="no answers for 3 problems"):
        ev.main(["--bench", "math", "--data", data, "--generations", str(gen)])
    gen.write_text("{not json")
    with pytest.raises(SystemExit, match="not JSON"):
        ev.main(["--bench", "math", "--data", data, "--generations", str(gen)])
    with pytest.raises(SystemExit, match="lacks one of"):
        ev.main(["--bench", "mbpp", "--data", data, "--generations", str(gen)])
    for argv, message in [
        (["--bench", "nope", "--generations", str(gen)], "invalid choice"),
        (["--bench", "math", "--data", str(tmp_path / "missing.jsonl"), "--generations", str(gen)],
         "--data must be an existing file"),
        (["--bench", "mbpp", "--generations", str(gen)], "needs --data"),
        (["--bench", "math", "--data", data, "--generations", str(gen), "--out", "/no/such/dir/r.json"], "--out"),
        (["--bench", "math", "--data", data, "--model", "smollm2-135m", "--n", "3"], "needs --temperature > 0"),
        (["--bench", "math", "--data", data, "--model", str(tmp_path / "no-model")],
         "--model must be an HF checkpoint directory"),
    ]:
        proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *argv],
                              capture_output=True, text=True, cwd=tmp_path)
        last = proc.stderr.strip().splitlines()[-1]  # argparse puts its usage lines first
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert last.startswith("eval.py: error:") and message in last


# A value each option must refuse, with the options that make the rest of the command line valid. An option
# added to eval.py without an entry here, or without a check in eval.ALLOWED, fails the test below.
BAD_OPTIONS = {
    "bench": ["--bench", "nope"], "suite": ["--suite", "table2"], "data": ["--data", "missing.jsonl"],
    "data_dir": ["--data-dir", "missing"], "model": ["--model", "no-model"],
    "generations": ["--generations", "missing.json"], "generations_dir": ["--generations-dir", "missing"],
    "limit": ["--limit", "0"], "lcb_start": ["--lcb-start", "May"], "lcb_end": ["--lcb-end", "2024-13-01"],
    "cache_dir": ["--cache-dir", "g.json"], "n": ["--n", "0"], "temperature": ["--temperature", "-1"],
    "prompt_format": ["--prompt-format", "fancy"], "max_new_tokens": ["--max-new-tokens", "0"],
    "batch_size": ["--batch-size", "0"], "seed": ["--seed", "x"], "device": ["--device", "tpu"],
    "workers": ["--workers", "0"], "out": ["--out", "no/such/dir/r.json"],
}


@pytest.mark.parametrize("name", [action.dest for action in ev.build_parser()._actions if action.dest != "help"])
def test_every_option_is_checked(name, tmp_path, monkeypatch, capsys):
    assert name in ev.ALLOWED and name in BAD_OPTIONS
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.json").write_text("{}")
    argv = BAD_OPTIONS[name]
    if name not in ("bench", "suite"):
        argv = ["--bench", "math"] + argv
    if name not in ("model", "generations", "generations_dir"):
        argv = argv + ["--generations", "g.json"]
    with pytest.raises(SystemExit) as exit_info:
        ev.main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("eval.py: error:") and ("--" + name.replace("_", "-")) in last, last


def test_cli_summary_is_last_line(tmp_path):
    data = os.path.join(DATA, "gsm8k-tiny.jsonl")
    gen = tmp_path / "g.json"
    gen.write_text(json.dumps({"0": ["#### 1200"] * 5, "1": ["#### 5"] * 4 + ["#### 6"]}))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--bench", "gsm8k", "--data", data,
                           "--generations", str(gen)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = "gsm8k: pass@1 60.0  pass@5 100.0  [2 problems, n=5 answers per problem]"
    assert proc.stdout.strip().splitlines()[-1] == summary


# ---------------------------------------------------------------------------------- generate mode

def response(tag, body):
    return f"I work it out.</think>\n<answer>\n```{tag}\n{body}\n```\n</answer>"


def test_responses_to_generations():
    assert ev.BENCHMARKS["cruxeval-o"].answer(response("output", "[1, 2]")) == "[1, 2]"
    assert ev.BENCHMARKS["cruxeval-i"].answer(response("input", "'ab', 3")) == "f(\n'ab', 3\n)"
    # a trailing comment stays inside the call, as in the trainer's parser: it still runs
    assert ev.BENCHMARKS["cruxeval-i"].answer(response("input", "'ab', 3  # two args")) == "f(\n'ab', 3  # two args\n)"
    assert ev.BENCHMARKS["cruxeval-o"].answer("no think close <answer>1</answer>") == ""  # malformed: wrong
    assert ev.BENCHMARKS["cruxeval-i"].answer(response("input", "1), g(2")) == ""  # smuggled code: rejected
    code = "def add(a, b):\n    return a + b\n"
    assert ev.BENCHMARKS["humaneval"].answer("x</think><answer>\n```python\n" + code + "```\n</answer>") == code
    assert ev.BENCHMARKS["mbpp"].answer("```python\nold\n```\n```py\n" + code + "```") == code  # no <answer>
    assert ev.BENCHMARKS["math"].answer("so \\boxed{2}") == "so \\boxed{2}"  # scored by extraction


class TextTokenizer:
    """One token per text: lets a scripted sampler see whole prompts and return whole responses."""
    chat_template = "(a stand-in: apply_chat_template below renders the turns)"

    def __init__(self):
        self.texts = []

    def encode(self, text):
        self.texts.append(text)
        return [len(self.texts) - 1]

    def __call__(self, text, add_special_tokens=True):
        return types.SimpleNamespace(input_ids=self.encode(text))

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"

    def decode(self, tokens, skip_special_tokens=True):
        return "".join(self.texts[t] for t in tokens)


def scripted_model(monkeypatch, answer_for):
    """Replaces model.py's loader and sampler: the response to each prompt is answer_for(prompt)."""
    import model
    tokenizer = TextTokenizer()
    seen = []

    def generate(model_, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(), n=1, seed=None,
                 cache=None, decoder=None):
        texts = [tokenizer.decode(p) for p in prompts]
        seen.extend(texts)
        return [[types.SimpleNamespace(tokens=tokenizer.encode(answer_for(t)), logprobs=[])] * n for t in texts]

    monkeypatch.setattr(model, "load_model", lambda *a, **k: (None, tokenizer))
    monkeypatch.setitem(ev.ALLOWED, "model", ("any name: the loader is replaced", lambda name: True))
    monkeypatch.setattr(model, "default_stop_ids", lambda tok: [])
    monkeypatch.setattr(model, "generate", generate)
    return seen


@needs_crux
@pytest.mark.parametrize("bench", ["cruxeval-o", "cruxeval-i"])
def test_generate_mode_with_right_answers(monkeypatch, tmp_path, bench):
    problems = read(CRUX)[:10]
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))

    def answer_for(prompt):
        p = next(p for p in problems if p["code"] in prompt)
        return response("output", p["output"]) if bench == "cruxeval-o" else response("input", p["input"])
    seen = scripted_model(monkeypatch, answer_for)
    out = tmp_path / "out.json"
    ev.main(["--bench", bench, "--data", str(data), "--model", "scripted", "--n", "2",
             "--temperature", "1", "--batch-size", "3", "--out", str(out)])
    result = json.loads(out.read_text())["benchmarks"][bench]
    assert result["pass@1"] == 100.0 and len(result["responses"]) == 10 and result["format_rate"] == 100.0
    assert len(seen) == 10 and all(s.endswith("Assistant: <think>") for s in seen)
    shown = "```input" if bench == "cruxeval-o" else "```output"  # deduction sees the input, abduction the output
    assert all(shown in s for s in seen)


def test_generate_mode_code_and_math(monkeypatch, tmp_path):
    problems = read(os.path.join(DATA, "humaneval-tiny.jsonl"))
    scripted_model(monkeypatch, lambda prompt: next(
        response("python", p["prompt"] + p["canonical_solution"]) for p in problems if p["prompt"] in prompt))
    result = ev.main(["--bench", "humaneval", "--data", os.path.join(DATA, "humaneval-tiny.jsonl"), "--model", "s"])
    assert result["benchmarks"]["humaneval"]["pass@1"] == 100.0
    golds = {"lowest terms": "\\dfrac12", "2x + 4": "3", "meets": "(1, 1)", "sqrt{12}": "2\\sqrt3"}
    scripted_model(monkeypatch, lambda prompt: next(
        f"so</think><answer>\\boxed{{{g}}}</answer>" for key, g in golds.items() if key in prompt))
    result = ev.main(["--bench", "math", "--data", os.path.join(DATA, "math-tiny.jsonl"), "--model", "s"])
    assert result["benchmarks"]["math"]["pass@1"] == 100.0


@needs_crux
def test_format_rate_and_recorded_chat_format(monkeypatch, tmp_path):
    """A checkpoint that records the chat format is prompted in chat turns without a flag; format_rate
    counts the well-formed answers (here every other problem gets a malformed response)."""
    problems = read(CRUX)[:4]
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"azr_prompt_format": "chat"}))

    def answer_for(prompt):
        index = next(i for i, p in enumerate(problems) if p["code"] in prompt)
        if index % 2:
            return "no closing tag, <answer>" + problems[index]["output"] + "</answer>"
        return response("output", problems[index]["output"])
    seen = scripted_model(monkeypatch, answer_for)
    report = ev.main(["--bench", "cruxeval-o", "--data", str(data), "--model", str(checkpoint)])
    result = report["benchmarks"]["cruxeval-o"]
    assert all(s.endswith("<|im_start|>assistant\n<think>") for s in seen)
    assert result["format_rate"] == 50.0 and result["pass@1"] == 50.0
    seen.clear()
    result = ev.main(["--bench", "cruxeval-o", "--data", str(data), "--model", str(checkpoint),
                      "--prompt-format", "plain"])
    assert all(s.endswith("Assistant: <think>") for s in seen)


@needs_crux
def test_generate_mode_tiny_random_model(tiny_checkpoint, tmp_path):
    """The real loader and sampler: a random model's answers are malformed, hence scored wrong."""
    data = tmp_path / "crux.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in read(CRUX)[:3]))
    out = tmp_path / "out.json"
    ev.main(["--bench", "cruxeval-i", "--data", str(data), "--model", str(tiny_checkpoint), "--n", "2",
             "--temperature", "1", "--max-new-tokens", "6", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())["benchmarks"]["cruxeval-i"]
    assert result["pass@1"] == 0.0 and result["pass@5"] is None and result["format_rate"] == 0.0
    assert [len(r) for r in result["responses"].values()] == [2, 2, 2]
    assert all(s == [False, False] for s in result["scores"].values())
