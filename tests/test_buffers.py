"""Tests for buffers.py and tasks.py: parsing, validation and rewards for all six (type, role) pairs against
the real executor, learnability, the identity seeds, prompts, and JSONL buffers (persistence and sampling)."""
import random
import warnings

import pytest

import buffers
import tasks
from buffers import N_IO, InductionTask, TaskBuffer, Triplet, format_prompt, identity_induction_task, identity_triplet
from executor import BANNED_MODULES, Executor
from tasks import (ROLES, TASKS, Rewards, parse_response, proposer_reward, score_proposals, score_solutions,
                   solver_reward)


@pytest.fixture(scope="module")
def executor():
    ex = Executor(workers=2, timeout_s=1.0)
    yield ex
    close = getattr(ex, "close", None)
    if close is not None:
        close()


def respond(body, think=" The function sorts, then slices.\n"):
    """A realistic response: it continues the prompt's open <think>."""
    return f"{think}</think>\n<answer>\n{body}\n</answer>"


def fence(tag, text):
    return f"```{tag}\n{text}\n```"


def answer(tag, text, **kw):
    """A well-formed response whose answer is one fenced block."""
    return respond(fence(tag, text), **kw)


SORT = Triplet("def f(xs, k):\n    return sorted(xs)[:k]", "[3, 1, 2], 2", "[1, 2]")
UNICODE = Triplet("def f(s):\n    return s[::-1]", "'héllo wörld ✓'", "'✓ dlröw olléh'")
AFFINE_INPUTS = ["0", "1", "2", "-3", "10", "7", "-1", "100", "5", "-20"]
AFFINE = InductionTask("def f(x):\n    return 2 * x + 1", "doubles, then adds one", AFFINE_INPUTS,
                       [repr(2 * int(i) + 1) for i in AFFINE_INPUTS])
COUNTS = Triplet("from collections import defaultdict\n\ndef f(s):\n    d = defaultdict(int)\n"
                 "    for c in s:\n        d[c] += 1\n    return d", "'aab'", "defaultdict(<class 'int'>, {'a': 2, 'b': 1})")
HUGE = "[" + ", ".join(["1"] * 50_000) + "]"

# ---------------------------------------------------------------------------------------------------
# Solver tables: (task, response, expected composite reward)

DEDUCTION_SOLVE = [
    ("correct", SORT, answer("output", "[1, 2]"), 1.0),
    ("correct, other spacing", SORT, answer("output", "[1,2]"), 1.0),
    ("wrong", SORT, answer("output", "[3, 1]"), -0.5),
    ("wrong type", SORT, answer("output", "(1, 2)"), -0.5),
    ("no </think>", SORT, "I think it is\n<answer>\n" + fence("output", "[1, 2]") + "\n</answer>", -1.0),
    ("no <answer>", SORT, " sorting gives [1, 2]</think>\nThe answer is [1, 2].", -1.0),
    ("unclosed </answer>", SORT, " ok</think>\n<answer>\n" + fence("output", "[1, 2]"), -1.0),
    ("text between think and answer", SORT, " ok</think> so: <answer>" + fence("output", "[1, 2]") + "</answer>",
     -1.0),
    # without an ```output fence the whole answer is the prediction (the authors' semantics)
    ("no fence", SORT, respond("[1, 2]"), 1.0),
    ("no fence, inline", SORT, " sorted</think><answer>[1,2]</answer>", 1.0),
    ("no fence, wrong", SORT, respond("The answer is [1, 2]"), -0.5),
    ("untagged fence", SORT, answer("", "[1, 2]"), -0.5),
    ("wrong fence tag", SORT, answer("python", "[1, 2]"), -0.5),
    ("unclosed fence", SORT, respond("```output\n[1, 2]"), -0.5),
    ("empty answer", SORT, respond("  \n "), -1.0),
    ("doubled fences, last correct", SORT, respond(fence("output", "[3]") + "\n" + fence("output", "[1, 2]")), 1.0),
    ("doubled fences, last wrong", SORT, respond(fence("output", "[1, 2]") + "\n" + fence("output", "[3]")), -0.5),
    ("extra text after </answer>", SORT, answer("output", "[1, 2]") + "\nHope this helps! </think>", 1.0),
    ("re-opened <think>", SORT, "<think>" + answer("output", "[1, 2]"), 1.0),
    ("unicode", UNICODE, respond(fence("output", "'✓ dlröw olléh'"), think=" 逆順にする ✓\n"), 1.0),
    ("unicode, wrong", UNICODE, answer("output", "'héllo wörld ✓'"), -0.5),
    ("enormous answer", SORT, answer("output", HUGE), -1.0),
    ("enormous think, correct", SORT, respond(fence("output", "[1, 2]"), think="hmm " * 50_000), 1.0),
    ("empty", SORT, answer("output", "  "), -1.0),
    # predictions are compared as values, never run: expressions and calls of f cannot match
    ("expression, not a value", SORT, answer("output", "sorted([3, 1, 2])[:2]"), -0.5),
    ("calls f", SORT, answer("output", "f([3, 1, 2], 2)"), -0.5),
    ("unparseable", SORT, answer("output", "[1, 2"), -0.5),
    ("gold repr that is not Python", COUNTS, answer("output", "defaultdict(<class 'int'>, {'a': 2, 'b': 1})"), 1.0),
]

ABDUCTION_SOLVE = [
    ("gold input", SORT, answer("input", "[3, 1, 2], 2"), 1.0),
    ("another input that works", SORT, answer("input", "[2, 9, 1], 2"), 1.0),
    ("keyword argument", SORT, answer("input", "[1, 2], k=5"), 1.0),
    ("wrong", SORT, answer("input", "[5, 6], 2"), -0.5),
    ("wrong arity", SORT, answer("input", "[1, 2]"), -0.5),
    ("no </think>", SORT, "<answer>" + fence("input", "[3, 1, 2], 2") + "</answer>", -1.0),
    ("no fence", SORT, respond("[3, 1, 2], 2"), 1.0),
    ("no fence, not an argument list", SORT, respond("The input is [3, 1, 2], 2"), -1.0),
    ("output fence instead", SORT, answer("output", "[3, 1, 2], 2"), -1.0),
    ("empty answer", SORT, respond(""), -1.0),
    ("doubled fences, last correct", SORT, respond(fence("input", "[9], 1") + fence("input", "[1, 2], 2")), 1.0),
    ("extra text after </answer>", SORT, answer("input", "[1, 2], 2") + " <answer>oops", 1.0),
    ("unicode", UNICODE, answer("input", "'héllo wörld ✓'"), 1.0),
    ("enormous answer", SORT, answer("input", HUGE + ", 2"), -1.0),
    ("expression, not a value", SORT, answer("input", "list(reversed([1, 2])), 2"), -0.5),
    ("calls f", SORT, answer("input", "f([1, 2], 2), 2"), -0.5),
    ("smuggled code", SORT, respond(fence("input", "[1, 2], 2), print(1")), -1.0),
    ("empty", SORT, answer("input", ""), -1.0),
]

_HARDCODED = "def f(x):\n    return {0: 1, 1: 3, 2: 5, -3: -5, 10: 21}[x]"
INDUCTION_SOLVE = [
    ("correct", AFFINE, answer("python", "def f(x):\n    return x + x + 1"), 1.0),
    ("with a helper", AFFINE, answer("python", "def g(x):\n    return 2 * x\n\ndef f(x):\n    return g(x) + 1"),
     1.0),
    ("fits only the shown pairs", AFFINE, answer("python", _HARDCODED), -0.5),
    ("misses a shown pair only", AFFINE, answer("python", "def f(x):\n    return 2 * x + 1 if x else 99"), 1.0),
    ("fits 4 of 5 hidden pairs", AFFINE,
     answer("python", "def f(x):\n    return 2 * x + 1 if x != -20 else 0"), -0.5),
    ("raises", AFFINE, answer("python", "def f(x):\n    return x / 0"), -0.5),
    ("banned import", AFFINE, answer("python", "import os\ndef f(x):\n    return 2 * x + 1"), -0.5),
    ("syntax error", AFFINE, answer("python", "def f(x)\n    return 2 * x + 1"), -1.0),
    ("no f", AFFINE, answer("python", "def g(x):\n    return 2 * x + 1"), -1.0),
    ("no fence", AFFINE, respond("def f(x):\n    return 2 * x + 1"), 1.0),
    ("no fence, prose", AFFINE, respond("f doubles and adds one"), -1.0),
    ("empty answer", AFFINE, respond(" "), -1.0),
    ("no <answer>", AFFINE, " easy</think>\n" + fence("python", "def f(x):\n    return 2 * x + 1"), -1.0),
    ("unicode", AFFINE, answer("python", "def f(x):\n    \"\"\"× 2 + 1 ✓\"\"\"\n    return 2 * x + 1"), 1.0),
    ("enormous answer", AFFINE, answer("python", "def f(x):\n    return 2 * x + 1\n" + "#" * 20_000), -1.0),
]

SOLVE_TABLE = ([("deduction",) + c for c in DEDUCTION_SOLVE] + [("abduction",) + c for c in ABDUCTION_SOLVE]
               + [("induction",) + c for c in INDUCTION_SOLVE])


def test_solver_table(executor):
    """All solver cases of all three types; one run_batch call per type."""
    for task_type in TASKS:
        cases = [c for c in SOLVE_TABLE if c[0] == task_type]
        solutions = score_solutions(executor, task_type, [c[2] for c in cases], [c[3] for c in cases])
        for (_, name, _, _, expected), solution in zip(cases, solutions):
            assert solver_reward(solution) == expected, (task_type, name, solution)
            assert solution.correct == (expected == 1.0), (task_type, name)
            assert solution.parsed.ok == (expected != -1.0), (task_type, name)


def test_solver_rewards_come_from_config(executor):
    rewards = Rewards(format_error=-3.0, wrong=-0.25)
    responses = [answer("output", "[1, 2]"), answer("output", "[2]"), respond(" ")]
    got = [solver_reward(s, rewards) for s in score_solutions(executor, "deduction", [SORT] * 3, responses)]
    assert got == [1.0, -0.25, -3.0]


def test_learnability_scoring_reads_the_answer_block_alone(executor):
    """The learnability rollouts are scored as the authors score them: the last <answer> block, thinking
    closed or not. Trained solver rollouts keep the full format rule."""
    unclosed = " 1 and 2 sorted ... <answer>\n```output\n[1, 2]\n```\n</answer>"  # no </think>
    wrong_unclosed = " hmm <answer>[2]</answer>"
    no_answer = " thinking forever"
    closed = answer("output", "[1, 2]")
    responses = [unclosed, wrong_unclosed, no_answer, closed]
    learnability = score_solutions(executor, "deduction", [SORT] * 4, responses, require_think=False)
    trained = score_solutions(executor, "deduction", [SORT] * 4, responses)
    assert [s.correct for s in learnability] == [True, False, False, True]
    assert [s.parsed.ok for s in learnability] == [True, True, False, True]
    assert [solver_reward(s) for s in trained] == [-1.0, -1.0, -1.0, 1.0]


# ---------------------------------------------------------------------------------------------------
# Proposer tables: (response, expected composite reward at solve rate 1/4, expected status)

def propose(program, inp="5"):
    return respond(fence("python", program) + "\n" + fence("input", inp), think=" A new task.\n")


GOOD = "import math\n\nSCALE = 2\n\ndef f(x):\n    tri = lambda n: n * (n + 1) // SCALE\n    return [tri(i) for i in range(x)]"
COUNTER = "calls = [0]\n\ndef f(x):\n    calls[0] += 1\n    return x + calls[0]"
TRIPLET_PROPOSE = [
    ("valid", propose(GOOD), 0.75, "ok"),
    ("valid, unicode", propose("def f(s):\n    return s.upper() + '✓'", "'größe'"), 0.75, "ok"),
    ("valid, extra text after </answer>", propose(GOOD) + "\nThat is my task.", 0.75, "ok"),
    # invalid proposals get -1, as malformed ones do (the authors' mapping)
    ("banned import", propose("import random\n\ndef f(x):\n    return x"), -1.0, "banned"),
    ("banned import inside f", propose("def f(x):\n    import os.path\n    return x"), -1.0, "banned"),
    ("non-deterministic", propose(COUNTER), -1.0, "nondeterministic"),
    ("infinite loop", propose("def f(x):\n    while True:\n        x += 1\n    return x"), -1.0, "timeout"),
    ("prints instead of returning", propose("def f(x):\n    print(x * 2)"), -1.0, "returns_none"),
    ("raises", propose("def f(x):\n    return x[0]"), -1.0, "error"),
    ("output too long", propose("def f(x):\n    return 'ab' * 1000 * x"), -1.0, "too_long"),
    # exactly one def in the whole program: f
    ("helper function", propose("def g(n):\n    return n + 1\n\ndef f(x):\n    return g(x)"), -1.0,
     "more_than_one_def"),
    ("nested function", propose("def f(x):\n    def g(n):\n        return n + 1\n    return g(x)"), -1.0,
     "more_than_one_def"),
    ("class with a method", propose("class A:\n    def v(self):\n        return 1\n\ndef f(x):\n    return x + A().v()"),
     -1.0, "more_than_one_def"),
    ("async helper", propose("async def g():\n    return 1\n\ndef f(x):\n    return x"), -1.0, "more_than_one_def"),
    ("class without methods", propose("class P:\n    k = 3\n\ndef f(x):\n    return x * P.k"), 0.75, "ok"),
    ("syntax error", propose("def f(x):\n    return (x"), -1.0, "syntax"),
    ("no f", propose("def g(x):\n    return x"), -1.0, "no_f"),
    ("no input fence", answer("python", GOOD), -1.0, "no_input_fence"),
    ("no python fence", answer("input", "5"), -1.0, "no_python_fence"),
    ("bad input", propose(GOOD, "5)"), -1.0, "bad_input"),
    ("empty input", propose(GOOD, ""), -1.0, "bad_input"),
    ("no </think>", "<answer>" + fence("python", GOOD) + fence("input", "5") + "</answer>", -1.0, "no_think"),
    ("no <answer>", " done</think>\n" + fence("python", GOOD) + fence("input", "5"), -1.0, "no_answer"),
    ("doubled fences, last counts", respond(fence("python", "def f(x):\n    return (") + fence("python", GOOD)
                                            + fence("input", "'x'") + fence("input", "4")), 0.75, "ok"),
    ("enormous program", propose(GOOD + "\n" + "# padding\n" * 2000), -1.0, "payload_too_long"),
]


def test_deduction_and_abduction_proposer_table(executor):
    for task_type in ("deduction", "abduction"):
        proposals = score_proposals(executor, task_type, [c[1] for c in TRIPLET_PROPOSE])
        for (name, _, expected, status), proposal in zip(TRIPLET_PROPOSE, proposals):
            assert proposer_reward(proposal, 0.25) == expected, (task_type, name, proposal.status)
            assert proposal.status == status, (task_type, name, proposal.status)
            assert proposal.valid == (expected >= 0), (task_type, name)
        assert proposals[0].task == Triplet(GOOD, "5", "[0, 1, 3, 6, 10]")  # output computed by the executor
        assert proposals[-2].task.input == "4"  # the last input fence counts


def induction_proposal(inputs, message="doubles its input and adds one"):
    body = "\n".join(fence("input", i) for i in inputs)
    if message is not None:
        body += "\n" + fence("message", message)
    return respond(body, think=" Cover negatives and zero.\n")


INDUCTION_PROPOSE = [
    ("valid", induction_proposal(AFFINE_INPUTS), 0.75, "ok"),
    ("valid, keyword and unicode message", induction_proposal(["x=%d" % i for i in range(10)], "× 2 + 1 ✓"), 0.75, "ok"),
    ("12 inputs, last 10 distinct", induction_proposal(["0", "0"] + AFFINE_INPUTS), 0.75, "ok"),
    ("9 inputs", induction_proposal(AFFINE_INPUTS[:9]), -1.0, "few_inputs"),
    ("no message", induction_proposal(AFFINE_INPUTS, None), -1.0, "no_message_fence"),
    ("empty message", induction_proposal(AFFINE_INPUTS, "  "), -1.0, "empty_message"),
    ("duplicate inputs", induction_proposal(AFFINE_INPUTS[:9] + ["0"]), -1.0, "duplicate_inputs"),
    ("duplicate inputs up to spacing", induction_proposal(["(%d, 1)" % i for i in range(9)] + ["(0,1)"]), -1.0,
     "duplicate_inputs"),
    ("one input raises", induction_proposal(AFFINE_INPUTS[:9] + ["'a'"]), -1.0, "error"),
    ("unparseable input", induction_proposal(AFFINE_INPUTS[:9] + ["[1,"]), -1.0, "bad_input"),
    ("no </think>", "<answer>" + "".join(fence("input", i) for i in AFFINE_INPUTS) + "</answer>", -1.0, "no_think"),
    ("enormous message", induction_proposal(AFFINE_INPUTS, "x" * 50_000), -1.0, "payload_too_long"),
]


def test_induction_proposer_table(executor):
    # One program for every case: 2x + 1 on ints, len on tuples, and a TypeError on the string 'a'.
    program = "def f(x=0):\n    return 2 * x + 1 if isinstance(x, int) else len(x) + x[0] * 0"
    proposals = score_proposals(executor, "induction", [c[1] for c in INDUCTION_PROPOSE],
                                [[Triplet(program, "1", "3")]] * len(INDUCTION_PROPOSE))
    for (name, _, expected, status), proposal in zip(INDUCTION_PROPOSE, proposals):
        assert proposer_reward(proposal, 0.25) == expected, (name, proposal.status)
        assert proposal.status == status, (name, proposal.status)
    task = proposals[0].task
    assert task == InductionTask(program, "doubles its input and adds one", AFFINE_INPUTS, AFFINE.outputs)
    assert task.shown_pairs == list(zip(AFFINE_INPUTS[:5], AFFINE.outputs[:5]))
    assert task.hidden_pairs == list(zip(AFFINE_INPUTS[5:], AFFINE.outputs[5:]))
    assert proposals[2].task.inputs == AFFINE_INPUTS


def test_proposer_reward_is_learnability_with_the_authors_mapping():
    valid = tasks.Proposal(buffers.Parsed(True, ""), identity_triplet(), "ok")
    invalid = tasks.Proposal(buffers.Parsed(True, ""), None, "error")
    malformed = tasks.Proposal(buffers.Parsed(False, "no_think"), None, "no_think")
    # valid but solved always or never: -0.5; no measured rate (prompt too long to roll out): the same
    got = [proposer_reward(valid, s) for s in (0.0, 1 / 8, 7 / 8, 1.0, float("nan"), None)]
    assert got == [-0.5, 7 / 8, 1 / 8, -0.5, -0.5, -0.5]
    assert proposer_reward(invalid, 0.5) == -1.0
    assert proposer_reward(malformed, 0.5) == -1.0
    rewards = Rewards(format_error=-2.0, wrong=-0.1, invalid=-0.7, unlearnable=-0.3)
    assert proposer_reward(invalid, None, rewards) == -0.7
    assert proposer_reward(malformed, None, rewards) == -2.0
    assert proposer_reward(valid, 1.0, rewards) == -0.3


class CountingExecutor:
    """Wraps the real executor and counts run_batch calls."""

    def __init__(self, executor):
        self.executor, self.calls = executor, 0

    def run_batch(self, calls):
        self.calls += 1
        return self.executor.run_batch(calls)


def test_scoring_is_one_batch_per_call(executor):
    counting = CountingExecutor(executor)
    score_solutions(counting, "deduction", [SORT] * 40, [answer("output", f"[{i}]") for i in range(40)])
    score_proposals(counting, "induction", [induction_proposal(AFFINE_INPUTS)] * 5, [[identity_triplet()]] * 5)
    assert counting.calls == 2
    score_solutions(counting, "abduction", [SORT] * 3, ["garbage"] * 3)  # nothing to run
    assert counting.calls == 2


def test_parse_never_raises():
    rng = random.Random(0)
    alphabet = ["<think>", "</think>", "<answer>", "</answer>", "```", "python", "input", "output", "message",
                "\n", " ", "f(", ")", "def f(x):", "return", "'", "\x00", "é", "[", "1", ","]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        for task_type in TASKS:
            for role in ROLES:
                parsed = parse_response(text, task_type, role)
                assert parsed.ok == (parsed.reason == "")
    deep = answer("output", "[" * 100_000)
    assert parse_response(deep, "deduction", "solve").reason == "payload_too_long"
    nested = answer("output", "[" * 600 + "]" * 600)  # deep but short: ast may refuse, never crash
    parse_response(nested, "deduction", "solve")


# ---------------------------------------------------------------------------------------------------
# Seeds and prompts

def test_identity_seeds_are_valid(executor):
    seed = identity_triplet()
    assert (seed.program, seed.input) == ("def f(a):\n    return a", "'Hello world'")
    task = identity_induction_task()
    assert len(task.inputs) == len(task.outputs) == N_IO and len(set(task.inputs)) == N_IO
    assert task.message == "returns its input unchanged"
    results = executor.run_batch([("validate", seed.program, seed.input)]
                                 + [("validate", task.program, i) for i in task.inputs])
    assert [r.status for r in results] == ["ok"] * (1 + N_IO)
    assert [r.output for r in results] == [seed.output] + task.outputs


def test_prompt_formats(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer
    prompt = format_prompt("Do it.")
    assert prompt.endswith("User: Do it.\nAssistant: <think>") and "<answer> </answer>" in prompt
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    chat = format_prompt("Do it.", "chat", tokenizer)
    # the system line and the task in the model's own turns, the assistant turn opened with <think>
    assert chat.endswith("<|im_start|>assistant\n<think>")
    assert "<|im_start|>system\n" + buffers.SYSTEM_LINE + "<|im_end|>" in chat
    assert "<|im_start|>user\nDo it.<|im_end|>" in chat
    with pytest.raises(ValueError, match="prompt format must be one of chat, plain"):
        format_prompt("Do it.", "fancy", tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        format_prompt("Do it.", "chat", None)


def test_worked_examples_are_well_formed_and_correct(executor):
    """Each prompt's example response must itself parse and score as the prompt asks (else it teaches
    a format the checker rejects)."""
    cases = [("abduction", "solve", buffers.SOLVER_EXAMPLES["abduction"]),
             ("induction", "solve", buffers.SOLVER_EXAMPLES["induction"]),
             ("deduction", "propose", buffers.PROPOSER_EXAMPLE),
             ("induction", "propose", buffers.INDUCTION_PROPOSER_EXAMPLE)]
    for task_type, role, text in cases:
        response = text.split("<think>", 1)[1]  # what the model writes after the prompt's <think>
        assert parse_response(response, task_type, role).ok, (task_type, role)
    task = Triplet(buffers.EXAMPLE_PROGRAM, "['ab', 'cde']", "5")
    response = buffers.SOLVER_EXAMPLES["abduction"].split("<think>", 1)[1]
    [solution] = score_solutions(executor, "abduction", [task], [response])
    assert solution.correct
    [proposal] = score_proposals(executor, "deduction", [buffers.PROPOSER_EXAMPLE.split("<think>", 1)[1]])
    assert proposal.valid and proposal.task.output == "5"


def test_prompts():
    references = [identity_triplet(), SORT]
    for task_type in ("deduction", "abduction"):
        text = TASKS[task_type].proposer_prompt(references)
        assert "no helper functions" in text and "Example of a complete response" in text
        assert "Reference 1:\n```python\ndef f(a):" in text and "Reference 2:\n```python\n" + SORT.program in text
        assert "```input\n[3, 1, 2], 2\n```\n```output\n[1, 2]\n```" in text
        assert all(module in text for module in BANNED_MODULES)
        assert len(TASKS[task_type].proposer_prompt([SORT] * 6)) < 4000  # short enough for small models
    text = TASKS["induction"].proposer_prompt([SORT])
    assert SORT.program in text and "f(<input goes here>)" in text and "```message" in text

    deduction = TASKS["deduction"].solver_prompt(SORT)
    assert SORT.program in deduction and SORT.input in deduction and "[1, 2]" not in deduction
    assert "```output" in deduction
    abduction = TASKS["abduction"].solver_prompt(SORT)
    assert "```output\n[1, 2]\n```" in abduction and "[3, 1, 2]" not in abduction and "```input" in abduction
    induction = TASKS["induction"].solver_prompt(AFFINE)
    assert AFFINE.message in induction and "2 * x" not in induction and "```python" in induction
    assert all(f"```input\n{i}\n```" in induction for i in AFFINE.inputs[:5])
    assert not any(f"```input\n{i}\n```" in induction for i in AFFINE.inputs[5:])  # hidden pairs stay hidden


# ---------------------------------------------------------------------------------------------------
# Buffers

def test_buffer_dedupe_and_jsonl_round_trip(tmp_path):
    path = str(tmp_path / "ded.jsonl")
    buffer = TaskBuffer(Triplet, path)
    assert buffer.add(identity_triplet()) and buffer.add(SORT) and buffer.add(UNICODE)
    assert not buffer.add(Triplet(SORT.program, SORT.input, "anything"))  # same (program, input)
    assert buffer.add(Triplet(SORT.program, "[5], 1", "[5]"))
    assert len(buffer) == 4
    reloaded = TaskBuffer(Triplet, path)
    assert list(reloaded) == list(buffer)
    assert buffer.items == [identity_triplet(), SORT, UNICODE, Triplet(SORT.program, "[5], 1", "[5]")]
    assert not reloaded.add(SORT)

    ind_path = str(tmp_path / "ind.jsonl")
    induction = TaskBuffer(InductionTask, ind_path)
    assert induction.add(identity_induction_task()) and induction.add(AFFINE)
    assert not induction.add(InductionTask(AFFINE.program, "other hint", list(AFFINE.inputs), AFFINE.outputs))
    assert TaskBuffer(InductionTask, ind_path).items == [identity_induction_task(), AFFINE]
    assert TaskBuffer(Triplet).add(SORT)  # in memory only


def test_buffer_survives_truncated_last_line(tmp_path):
    path = tmp_path / "abd.jsonl"
    buffer = TaskBuffer(Triplet, str(path))
    for i in range(5):
        buffer.add(Triplet(SORT.program, f"[{i}], 1", f"[{i}]"))
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # killed in the middle of writing the 5th line
    with pytest.warns(UserWarning, match="corrupt"):
        resumed = TaskBuffer(Triplet, str(path))
    assert resumed.items == buffer.items[:4]
    assert resumed.add(Triplet(SORT.program, "[9], 1", "[9]"))  # appends start on a clean line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = TaskBuffer(Triplet, str(path))
    assert again.items == buffer.items[:4] + [Triplet(SORT.program, "[9], 1", "[9]")]


def test_buffer_skips_corrupt_middle_line(tmp_path):
    path = tmp_path / "ded.jsonl"
    TaskBuffer(Triplet, str(path)).add(SORT)
    with open(path, "a") as fh:
        fh.write('{"program": "x"}\nnot json\n{"program": 1, "input": 2, "output": 3}\n[1]\n')
    with pytest.warns(UserWarning, match="corrupt"):
        TaskBuffer(Triplet, str(path)).add(UNICODE)
    with pytest.warns(UserWarning, match="corrupt"):
        assert TaskBuffer(Triplet, str(path)).items == [SORT, UNICODE]


def test_sampling_is_reproducible_and_identical_across_instances(tmp_path):
    tasks = [Triplet(f"def f(x):\n    return x + {i}", "1", str(1 + i)) for i in range(20)]
    first, second = TaskBuffer(Triplet, str(tmp_path / "a.jsonl")), TaskBuffer(Triplet)
    for task in tasks:
        first.add(task)
        second.add(task)
    rng_a, rng_b = random.Random(1234), random.Random(1234)
    draws_a = [first.sample(6, rng_a) for _ in range(5)]
    draws_b = [second.sample(6, rng_b) for _ in range(5)]
    assert draws_a == draws_b
    assert TaskBuffer(Triplet, str(tmp_path / "a.jsonl")).sample(6, random.Random(1234)) == draws_a[0]  # after reload
    assert all(len(set(map(id, d))) == 6 for d in draws_a)  # without replacement
    assert len({tuple(map(id, d)) for d in draws_a}) > 1  # the rng state advances
    assert len(first.sample(50, random.Random(0))) == 20  # k capped at len
    assert TaskBuffer(Triplet).sample(3, random.Random(0)) == []
    # uniform: every task drawn about equally often
    rng = random.Random(0)
    counts = [0] * 20
    for _ in range(2000):
        for task in first.sample(3, rng):
            counts[tasks.index(task)] += 1
    assert min(counts) > 220 and max(counts) < 380  # expectation 300 each
