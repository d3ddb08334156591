"""MBPP (original or sanitized split), each answer run with the problem's setup and its `test_list` asserts."""
from buffers import is_well_formed
from evals.common import SCRIPT_SANDBOX, Benchmark, fail, load_records, score_scripts
from evals.humaneval import ANSWER_CODE, extract_code


def load(path, options):
    problems = load_records(path, "mbpp", ("test_list",))
    for index, problem in enumerate(problems.values()):
        if not ("prompt" in problem or "text" in problem):
            fail(f"{path}: record {index} has neither 'prompt' nor 'text'")
    return problems


def prompt(problem):
    tests = "\n".join(problem["test_list"])
    task = problem.get("prompt", problem.get("text"))
    return f"{task}\nYour code must pass these tests:\n```python\n{tests}\n```\n{ANSWER_CODE}"


def script(problem, answer):
    """Setup (`test_imports` of the sanitized split, `test_setup_code` of the original), the answer, then the
    `test_list` asserts."""
    setup = "\n".join(problem.get("test_imports") or []) + "\n" + problem.get("test_setup_code", "")
    return "\n".join([setup, answer, *problem["test_list"]]) + "\n"


def score(problems, answers, executor, options):
    return score_scripts(problems, answers, executor, script)


MBPP = Benchmark(load=load, prompt=prompt, wraps_prompt=True, answer=extract_code, score=score,
                 max_new_tokens=1024, sandbox=SCRIPT_SANDBOX, well_formed=is_well_formed)
