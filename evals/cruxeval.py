"""CRUXEval-O (output prediction) and CRUXEval-I (input prediction), prompted with the trainer's solver
prompts (deduction for -O, abduction for -I, as the paper evaluates) and scored as facebookresearch/cruxeval
`evaluation/` scores them."""
from buffers import Triplet
from evals.common import SCRIPT_SANDBOX, Benchmark, load_records, score_scripts
from tasks import TASKS, parse_response

FIELDS = ("code", "input", "output")


def load(path, options):
    return load_records(path, "cruxeval", FIELDS)


def script(problem, answer, predicts):
    """The program cruxeval's `evaluate_score` runs for one answer, or None for an answer it counts
    wrong without running (utils_general.py); `predicts`: "output" (-O) or "input" (-I).
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
    if predicts == "output" and f"f({problem['input']})" in answer:
        return None
    if predicts == "input" and "f(" not in answer:
        answer = f"f({answer})"
    return f"{problem['code']}\nassert {problem['output']} == {answer}"


def score_output_predictions(problems, answers, executor, options):
    return score_scripts(problems, answers, executor, lambda problem, answer: script(problem, answer, "output"))


def score_input_predictions(problems, answers, executor, options):
    return score_scripts(problems, answers, executor, lambda problem, answer: script(problem, answer, "input"))


def answer(response, task_type):
    """The trainer's solver parse of a response, as the answer string the official rule scores (a malformed
    response is the empty answer: wrong, never a crash). From here the answer text is evaluated, unlike the
    trainer's value comparison (docs/algorithm.md, "Three task types"). The payload goes on its own lines, as
    the trainer parses it, so a trailing comment cannot eat the ")"."""
    parsed = parse_response(response, task_type, role="solve")
    if not parsed.ok:
        return ""
    return parsed.payload if task_type == "deduction" else f"f(\n{parsed.payload}\n)"


def well_formed(response, task_type):
    """The trainer's solver parse succeeds, so the answer was read as the model meant it."""
    return parse_response(response, task_type, role="solve").ok


CRUXEVAL_O = Benchmark(
    load=load,
    prompt=lambda problem: TASKS["deduction"].solver_prompt(Triplet(problem["code"], problem["input"], "")),
    wraps_prompt=True,
    answer=lambda response: answer(response, "deduction"),
    score=score_output_predictions,
    max_new_tokens=1024,
    sandbox=SCRIPT_SANDBOX,
    well_formed=lambda response: well_formed(response, "deduction"),
)

CRUXEVAL_I = Benchmark(
    load=load,
    prompt=lambda problem: TASKS["abduction"].solver_prompt(Triplet(problem["code"], "", problem["output"])),
    wraps_prompt=True,
    answer=lambda response: answer(response, "abduction"),
    score=score_input_predictions,
    max_new_tokens=1024,
    sandbox=SCRIPT_SANDBOX,
    well_formed=lambda response: well_formed(response, "abduction"),
)
