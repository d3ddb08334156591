"""The parts AZR's tasks are made of: task data types, buffers, prompt texts and response parsers.
tasks.py assembles them into the three task types (one record each) and scores responses with them.

The task design in a few lines. A *program* is Python source defining `f`; an *input* is the source of
an argument list (`[1, 2], 'abc'`); an *output* is `repr(f(input))`, computed by the executor, never by
the model. One model plays two roles on three task types:

    deduction  propose: a program + input, given K references  solve: program + input -> the output
    abduction  propose: a program + input, given K references  solve: program + output -> any input
    induction  propose: 10 inputs + a hint for a buffer program  solve: 5 shown pairs + hint -> an f
                                                                 that also fits the 5 hidden pairs

Every response continues the prompt's open `<think>`, must close it, then answer inside
`<answer> </answer>` with the payload in fenced blocks (```python, ```input, ```output, ```message);
a solver answer without the expected fence is its payload as a whole.
Valid proposals go to per-type buffers (append-only JSONL) that supply references and solver tasks.

Nothing model-written is evaluated here: code and inputs are only checked with `ast.parse`; tasks.py
sends everything that runs to the executor.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import textwrap
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from executor import BANNED_MODULES, defines_f, is_call_of_f

N_IO = 10  # input/output pairs per induction task (the paper's setting)
N_SHOWN = 5  # the first N_SHOWN pairs are shown to the solver, the rest are hidden

# Payload length bounds (the paper gives none; chosen by us). A payload over its bound counts as unparseable
# (-1): gold outputs are at most max_output_chars = 1000, so a 2x longer prediction cannot be right.
MAX_PROGRAM_CHARS = 10_000
MAX_VALUE_CHARS = 2_000  # one input argument list or one output value
MAX_MESSAGE_CHARS = 2_000


# ----------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Triplet:
    """A deduction/abduction task: program, input (argument-list source), output (repr)."""
    program: str
    input: str
    output: str

    def key(self) -> tuple:
        """What makes two triplets the same task in a buffer: the output follows from these."""
        return (self.program, self.input)


@dataclass
class InductionTask:
    """A program, a natural-language hint, and N_IO input/output pairs (first N_SHOWN shown)."""
    program: str
    message: str
    inputs: list[str]
    outputs: list[str]

    def __post_init__(self):
        if len(self.inputs) != N_IO or len(self.outputs) != N_IO:
            raise ValueError(f"an induction task needs {N_IO} inputs and outputs")

    def key(self) -> tuple:
        """What makes two induction tasks the same in a buffer (the message is only a hint)."""
        return (self.program, tuple(self.inputs))

    @property
    def shown_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.inputs[:N_SHOWN], self.outputs[:N_SHOWN]))

    @property
    def hidden_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.inputs[N_SHOWN:], self.outputs[N_SHOWN:]))


def identity_triplet() -> Triplet:
    """The seed every triplet buffer starts from: the identity function (docs/algorithm.md, Seeding)."""
    return Triplet(program="def f(a):\n    return a", input="'Hello world'", output="'Hello world'")


def identity_induction_task() -> InductionTask:
    """The identity seed for the induction buffer. It covers five kinds of input (string, int, dict,
    tuple of floats, nested list); a task needs N_IO = 10, so each kind appears once among the shown
    and once among the hidden pairs. Every input is written as its own repr,
    so the outputs equal the inputs (tests check this against the executor)."""
    inputs = ["'Hello world'", "42", "{'a': 1, 'b': [2, 3]}", "(1.5, -2.0, 3.25)", "[[1, 2], [3, [4, 5]]]",
              "'AZR'", "-7", "{'x': (0, 1)}", "(0.1, 2.5)", "[[], [[0]], 'z']"]
    return InductionTask(program="def f(a):\n    return a", message="returns its input unchanged",
                         inputs=inputs, outputs=list(inputs))


# ----------------------------------------------------------------------------------------------------
# Buffers


def _check_types(task):
    """Raise ValueError unless a task loaded from JSON has the field types we write: every field a string
    or a list of strings."""
    for value in vars(task).values():
        strings = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in strings):
            raise ValueError("task fields must be strings")


class TaskBuffer:
    """The tasks of one type (all of class `task_class`), deduplicated by their key(), in insertion order,
    optionally persisted as JSONL.

    Each line is one task as JSON, appended and flushed as it is added, so a killed run loses at most
    the line being written. On load, a line that is not valid JSON for a task is skipped with a
    warning; an unterminated last line (killed mid-write) is also cut from the file so later appends
    start on a fresh line. Under DDP every rank adds the same tasks in the same order; give a path on
    one rank only.
    """

    def __init__(self, task_class: type, path: str | None = None):
        self.task_class = task_class
        self.path = path
        self.items: list = []
        self._keys: set = set()
        if path is not None and os.path.exists(path):
            self._load(path)

    def _load(self, path):
        with open(path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                self._load_line(line, f"{path}:{lineno}")
        if tail.strip() and not self._load_line(tail, f"{path}:{len(lines) + 1} (unterminated)"):
            with open(path, "r+b") as fh:  # drop the partial line, keep everything before it
                fh.truncate(len(data) - len(tail))
        elif tail.strip():
            with open(path, "ab") as fh:
                fh.write(b"\n")

    def _load_line(self, line: bytes, where: str) -> bool:
        try:
            record = json.loads(line.decode("utf-8"))
            task = self.task_class(**record)
            _check_types(task)
        except Exception as e:  # corrupt JSON, bad UTF-8, wrong fields: skip, never fatal
            warnings.warn(f"skipping corrupt buffer line {where}: {type(e).__name__}: {e}")
            return False
        self._add(task)
        return True

    def _add(self, task) -> bool:
        key = task.key()
        if key in self._keys:
            return False
        self._keys.add(key)
        self.items.append(task)
        return True

    def add(self, task) -> bool:
        """Add a task unless one with the same key is there; True if added."""
        if not self._add(task):
            return False
        if self.path is not None:
            # ensure_ascii keeps the file pure ASCII, so no encoding can ever fail or split a line.
            with open(self.path, "a", encoding="ascii") as fh:
                fh.write(json.dumps(asdict(task)) + "\n")
                fh.flush()
        return True

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def sample(self, k: int, rng: random.Random) -> list:
        """k distinct tasks uniformly at random (k capped at len). Depends only on the buffer's
        content and order and on rng's state, so ranks with the same rng draw the same tasks."""
        return rng.sample(self.items, min(k, len(self.items)))


# ----------------------------------------------------------------------------------------------------
# Prompts. The task text is the same for every model; how it is wrapped depends on the prompt format:
#   plain: the paper's template for base models, "{system}\nUser: {task}\nAssistant: <think>";
#   chat:  the same system line and task in the tokenizer's chat template, the assistant turn opened
#          with "<think>". Instruct models ignore the plain template (0 of 16 well-formed responses
#          measured for Qwen2.5-Coder-0.5B-Instruct) but follow their own chat turns.
# Every task text has one short worked example of a complete, well-formed response (our own
# trivial program): small models copy the shape of an example far more reliably than a description.

PROMPT_FORMATS = ("chat", "plain")

SYSTEM_LINE = ("A conversation between User and Assistant. The Assistant first thinks step by step "
               "inside <think> </think>, then gives its final answer inside <answer> </answer>.")

INPUT_FORMAT = ("An input is the argument list that goes between the parentheses of f(...), "
                "e.g. [1, 2, 3], 'abc' calls f with two arguments.")


def format_prompt(task_text: str, prompt_format: str = "plain", tokenizer=None) -> str:
    """Wrap a task text for the model; the response continues the open <think>."""
    if prompt_format == "plain":
        return f"{SYSTEM_LINE}\nUser: {task_text}\nAssistant: <think>"
    if prompt_format != "chat":
        raise ValueError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, not {prompt_format!r}")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat prompt format needs a tokenizer with a chat template")
    messages = [{"role": "system", "content": SYSTEM_LINE}, {"role": "user", "content": task_text}]
    opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return opened + "<think>"


def encode_prompt(tokenizer, task_text: str, prompt_format: str) -> list[int]:
    """Token ids of the wrapped task. A chat template already holds its special tokens as text, so no
    BOS is added on top of it; the plain template gets the tokenizer's usual special tokens."""
    prompt = format_prompt(task_text, prompt_format, tokenizer)
    return tokenizer(prompt, add_special_tokens=prompt_format == "plain").input_ids


def _fence(tag: str, body: str) -> str:
    return f"```{tag}\n{body}\n```"


def _answer_format(tag: str, body: str) -> str:
    return f"<answer>\n{_fence(tag, body)}\n</answer>"


def _example(thinking: str, answer_blocks: str) -> str:
    """A worked example of one complete response, as the model should write it."""
    return ("Example of a complete response to a different task:\n"
            f"<think>{thinking}</think>\n<answer>\n{answer_blocks}\n</answer>")


EXAMPLE_PROGRAM = "def f(words):\n    total = 0\n    for w in words:\n        total += len(w)\n    return total"

PROPOSER_EXAMPLE = _example(
    "I will sum the lengths of the words: the solver has to count letters word by word.",
    _fence("python", EXAMPLE_PROGRAM) + "\n" + _fence("input", "['ab', 'cde']"))

INDUCTION_PROPOSER_EXAMPLE = _example(
    "f squares its argument. Varied inputs, including negatives and zero, reveal that.",
    "\n".join(_fence("input", i) for i in ("0", "1", "-2", "3", "-4", "5", "6", "-7", "10", "12"))
    + "\n" + _fence("message", "Think of multiplying a number by itself."))

SOLVER_EXAMPLES = {
    "abduction": _example("f returns the total length of the words. For 5 I need words with 5 letters "
                          "in all, e.g. ['ab', 'cde'].", _fence("input", "['ab', 'cde']")),
    "induction": _example("Every output is 3 more than its input.", _fence("python", "def f(x):\n    return x + 3")),
}


def _rules(banned) -> str:
    return (
        "Rules (a checker enforces them):\n"
        "- Write exactly one function, named f, with at least one parameter, that returns a value. "
        "No other def anywhere: no helper functions, no nested functions, no classes with methods.\n"
        "- Put any imports at the top, before f.\n"
        "- f must be deterministic: no randomness, date or time, file or network I/O, printing, "
        "or other external state.\n"
        # sorted: the executor may hold the list as a set, and every DDP rank must build the same prompt
        f"- Do not import these modules: {', '.join(sorted(banned))}.\n"
        "- f must finish quickly, well under a second.\n"
        f"- {INPUT_FORMAT}")


def induction_proposer_prompt(references: list[Triplet]) -> str:
    """The induction proposer's task text: the program of its one reference Triplet."""
    program = references[0].program
    return (
        "Here is a Python function:\n" + _fence("python", program) + "\nf(<input goes here>)\n\n"
        f"Write {N_IO} different inputs for f that give diverse outputs and together reveal what "
        f"f does. {INPUT_FORMAT} Put each input in its own ```input block. Then write a short "
        "hint in a ```message block that helps someone guess f from input/output examples "
        "without showing the code.\n\n"
        "Answer format:\n<answer>\n" + _fence("input", "...") + "\n(10 input blocks in all)\n"
        + _fence("message", "...") + "\n</answer>\n\n" + INDUCTION_PROPOSER_EXAMPLE)


def deduction_proposer_prompt(references: list[Triplet]) -> str:
    """The deduction proposer's task text: K reference Triplets."""
    return _triplet_proposer_prompt("predicting its output from the code and the input", references)


def abduction_proposer_prompt(references: list[Triplet]) -> str:
    """The abduction proposer's task text: K reference Triplets."""
    return _triplet_proposer_prompt("finding an input that produces its output", references)


def _triplet_proposer_prompt(goal: str, references: list[Triplet]) -> str:
    shown = []
    for number, reference in enumerate(references, 1):
        shown.append(f"Reference {number}:\n" + _fence("python", reference.program) + "\n"
                     + _fence("input", reference.input) + "\n" + _fence("output", reference.output))
    return (
        "Create a new Python program f and one input for it, so that " + goal + " needs several "
        "steps of reasoning. Make it different from the references.\n\n" + _rules(BANNED_MODULES) + "\n\n"
        + "\n\n".join(shown) + "\n\nAnswer format:\n<answer>\n" + _fence("python", "def f(...):\n    ...")
        + "\n" + _fence("input", "...") + "\n</answer>\n\n" + PROPOSER_EXAMPLE)


def deduction_solver_prompt(task: Triplet) -> str:
    """The deduction solver's task text: program and input."""
    # No worked example: with one, the model copied the example's trace and numbers into its answers,
    # and training made that worse (README, "Prompts the model follows"). The response's shape is shown
    # with placeholders instead, and "a few short steps" keeps the thinking inside the token limit.
    return (
        "Predict what this Python function returns for the given input.\n\n" + _fence("python", task.program)
        + "\n" + _fence("input", task.input) + "\n\n"
        "Think step by step: run the code in your head on this input, line by line, and write down the "
        "values the variables take.\nThink it through in a few short steps, then close your thinking with "
        "</think>.\nAnswer with the returned value written as a Python literal:\n" + _answer_format("output", "...")
        + "\n\nA complete response looks like this:\n<think> your short reasoning </think>\n"
        + _answer_format("output", "(the returned value)"))


def abduction_solver_prompt(task: Triplet) -> str:
    """The abduction solver's task text: program and output."""
    return (
        "Find an input for which this Python function returns the given output.\n\n"
        + _fence("python", task.program) + "\n" + _fence("output", task.output) + "\n\n"
        f"{INPUT_FORMAT} Any input that produces the output is correct. Answer with the input:\n"
        + _answer_format("input", "...") + "\n\n" + SOLVER_EXAMPLES["abduction"])


def induction_solver_prompt(task: InductionTask) -> str:
    """The induction solver's task text: the message and the shown pairs."""
    examples = "\n".join(_fence("input", i) + "\n" + _fence("output", o) for i, o in task.shown_pairs)
    return (
        "Write the Python function f that maps each input to its output in these examples.\n\n"
        f"Hint: {task.message}\n\n{examples}\n\nf will also be tested on other inputs. Answer with "
        "its code:\n" + _answer_format("python", "def f(...):\n    ...") + "\n\n" + SOLVER_EXAMPLES["induction"])


# ----------------------------------------------------------------------------------------------------
# Parsing (docs/algorithm.md, Response format). Never raises: every malformed case becomes a reason string.


@dataclass
class Parsed:
    ok: bool
    reason: str  # "" when ok, else why the response or its payload was rejected
    answer: str = ""  # the text inside the last <answer>...</answer>
    payload: Any = None  # propose: a dict (parse_triplet_proposal, parse_induction_proposal); solve: str


_THINK_THEN_ANSWER = re.compile(r"</think>\s*<answer>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# A fenced block: ```tag, then the body up to the next ```. Untagged blocks are ignored.
_FENCE = re.compile(r"```[ \t]*([A-Za-z]+)[ \t\r]*\n(.*?)```", re.DOTALL)


def program_error(src: str, one_function: bool = False) -> str:
    """"" if src parses and defines f at top level, else the reason. With one_function (proposals, as
    in the authors' code) f must be the only def in the whole syntax tree: no helpers, nested functions
    or methods; lambdas, top-level imports and constants stay allowed."""
    if len(src) > MAX_PROGRAM_CHARS:
        return "payload_too_long"
    try:
        tree = ast.parse(src)
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError
        return "syntax"
    if not defines_f(tree):
        return "no_f"
    if one_function:
        defs = 0
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs += 1
        if defs > 1:
            return "more_than_one_def"
    return ""


def _parse_call(src: str):
    """The ast.Call of f(<src>), or None unless src is exactly a non-empty argument list (see
    executor.is_call_of_f). Newlines around src allow a trailing comment, as in the executor. Unlike the
    executor's check, which holds for any call, an empty argument list is a format error here: a proposer
    or solver must write an input."""
    try:
        call = ast.parse(f"f(\n{src}\n)", mode="eval").body
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError, MemoryError
        return None
    if not is_call_of_f(call):
        return None
    if not call.args and not call.keywords:
        return None
    return call


def input_error(src: str) -> str:
    if len(src) > MAX_VALUE_CHARS:
        return "payload_too_long"
    return "" if _parse_call(src) is not None else "bad_input"


def output_error(src: str) -> str:
    """A predicted output is compared as a value by the executor, which never runs it. It need not
    even parse: a gold repr may not be Python (defaultdict(<class 'int'>, {}), <Color.RED: 1>) and the
    executor then compares text. So only emptiness and length are format errors here."""
    if len(src) > MAX_VALUE_CHARS:
        return "payload_too_long"
    return "" if src else "empty_output"


def _fences(answer: str, tag: str) -> list[str]:
    # dedent: a block indented as a whole (common inside lists) is still valid code
    return [textwrap.dedent(body).strip() for t, body in _FENCE.findall(answer) if t == tag]


def _answer_start(text: str):
    """The match of the `</think><answer>` that makes `text` (already prefixed with <think>) well formed,
    or None when the thinking is not closed or no `</answer>` follows."""
    first = _THINK_THEN_ANSWER.search(text)
    if first is None or "</answer>" not in text[first.end():]:
        return None
    return first


def answer_block(text: str, require_think: bool = True) -> Parsed:
    """The answer block of a response that continues the prompt's "Assistant: <think>": Parsed(True, "",
    its text), or Parsed(False, why) when there is none. tasks.parse_response reads the payload from it.

    The prompt opened <think>, so the response starts inside the think block: we prepend "<think>"
    and require `<think>...</think>` then `<answer>...</answer>`; text after </answer> is ignored.
    A response that opens <think> again is fine (the extra tag is just thinking text).
    require_think=False reads the last complete `<answer>...</answer>` wherever it is, thinking closed
    or not: how the authors score the learnability rollouts (reward_managers.py, the solver-accuracy
    estimate). Trained rollouts keep the full rule.
    """
    text = "<think>" + text
    if not require_think:
        answers = _ANSWER.findall(text)
        if not answers:
            return Parsed(False, "no_answer")
        return Parsed(True, "", answers[-1])
    first = _answer_start(text)
    if first is None:
        return Parsed(False, "no_think" if "</think>" not in text else "no_answer")
    answer = list(_ANSWER.finditer(text, first.start()))[-1].group(1)  # an <answer> in the thinking is not one
    return Parsed(True, "", answer)


def is_well_formed(text: str) -> bool:
    """The response (continuing the prompt's <think>) closes its thinking, then answers in <answer> tags."""
    return _answer_start("<think>" + text) is not None


# The payload parsers of one answer block's text. When a fence of one kind appears several times, the last
# one counts (a model may draft, then correct).


def parse_triplet_proposal(answer: str) -> Parsed:
    """A deduction or abduction proposal: payload {"program", "input"}."""
    def fail(reason):
        return Parsed(False, reason, answer)

    programs = _fences(answer, "python")
    inputs = _fences(answer, "input")
    if not programs:
        return fail("no_python_fence")
    if not inputs:
        return fail("no_input_fence")
    reason = program_error(programs[-1], one_function=True)
    if reason:
        return fail(reason)
    reason = input_error(inputs[-1])
    if reason:
        return fail(reason)
    return Parsed(True, "", answer, {"program": programs[-1], "input": inputs[-1]})


def parse_induction_proposal(answer: str) -> Parsed:
    """An induction proposal: the last N_IO input fences and a message; payload {"inputs", "message"}."""
    def fail(reason):
        return Parsed(False, reason, answer)

    inputs = _fences(answer, "input")
    messages = _fences(answer, "message")
    if len(inputs) < N_IO:
        return fail("few_inputs")
    inputs = inputs[-N_IO:]
    if not messages:
        return fail("no_message_fence")
    if not messages[-1]:
        return fail("empty_message")
    if len(messages[-1]) > MAX_MESSAGE_CHARS:
        return fail("payload_too_long")
    for inp in inputs:
        reason = input_error(inp)
        if reason:
            return fail(reason)
    return Parsed(True, "", answer, {"inputs": inputs, "message": messages[-1]})


def parse_solver_answer(tag: str, payload_error, answer: str) -> Parsed:
    """A solver's answer: the last ```tag fence, checked by payload_error (program_error, input_error or
    output_error); payload the fence's text."""
    found = _fences(answer, tag)
    if found:
        payload = found[-1]
    else:
        # No fence of the expected kind: the whole answer is the payload, as in the authors' code
        # (<answer>[1, 9]</answer> is a deduction answer).
        payload = textwrap.dedent(answer).strip()
    if not payload:
        return Parsed(False, "empty_answer", answer)
    reason = payload_error(payload)
    if reason:
        return Parsed(False, reason, answer)
    return Parsed(True, "", answer, payload)


def input_syntax(src: str) -> str:
    """The syntax tree of a well-formed input as text: inputs are distinct when their trees differ, so
    [1,2] and [1, 2] count as the same input."""
    return ast.dump(_parse_call(src))
