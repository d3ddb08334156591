"""The deduction-solver prompt probes of README "Learning on a CPU": variants v0-v7 of the prompt on
data/cruxeval-50.jsonl (our own sample, not the problems the claim is checked on), answers decoded with the
int8 decoder for speed. Run from the repository root:
    python docs/cpu-run-2/prompt-probes/probe_prompt.py VARIANT OUT.json [ANSWERS [MODEL]]
    python docs/cpu-run-2/prompt-probes/probe_prompt.py v7 /tmp/v7.json 4
v0 was the prompt then; v7 is the one kept (buffers.deduction_solver_prompt). MODEL (default the embedded
model) may be a run's checkpoint directory, for a quick int8 look at a checkpoint."""
import os
import sys
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)
import dataclasses
import buffers, model, eval as ev
from buffers import Triplet, _fence, _answer_format

variant, out = sys.argv[1], sys.argv[2]
n = sys.argv[3] if len(sys.argv) > 3 else "2"
model_name = sys.argv[4] if len(sys.argv) > 4 else "qwen2.5-coder-0.5b-instruct"

def task_block(task):
    return ("Predict what this Python function returns for the given input.\n\n"
            + _fence("python", task.program) + "\n" + _fence("input", task.input) + "\n\n")

ANSWER = "Answer with the returned value written as a Python literal:\n" + _answer_format("output", "...")
TRACE = ("Think step by step: run the code in your head on this input, line by line, and write down "
         "the values the variables take.\n")
EXAMPLE_TRACE = buffers._example(
    "f(['ab', 'cde']): total = 0. w = 'ab': total = 0 + 2 = 2. w = 'cde': total = 2 + 3 = 5. "
    "The loop ends and f returns 5.", _fence("output", "5"))

V0_EXAMPLE = buffers._example("f adds up the lengths of the words. For ['ab', 'cde']: total = 0 + 2 = 2, "
                               "then 2 + 3 = 5, so it returns 5.", _fence("output", "5"))

def v0(task):
    return task_block(task) + ANSWER + "\n\n" + V0_EXAMPLE
def v1(task):
    return V0_EXAMPLE + "\n\nYour task: " + task_block(task) + ANSWER
def v2(task):
    return task_block(task) + ANSWER
def v3(task):
    return EXAMPLE_TRACE + "\n\nYour task: " + task_block(task) + TRACE + ANSWER
def v4(task):
    return task_block(task) + TRACE + ANSWER + "\n\n" + EXAMPLE_TRACE
BRIEF = "Think it through in a few short steps, then close your thinking with </think>.\n"
SKELETON = ("\n\nA complete response looks like this:\n<think> your short reasoning </think>\n"
            + _answer_format("output", "(the returned value)"))
def v5(task):
    return task_block(task) + BRIEF + ANSWER
def v6(task):
    return task_block(task) + BRIEF + ANSWER + SKELETON
def v7(task):
    return task_block(task) + TRACE + BRIEF + ANSWER + SKELETON

variant_prompt = {"v0": v0, "v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5, "v6": v6, "v7": v7}[variant]
ev.BENCHMARKS["cruxeval-o"] = dataclasses.replace(
    ev.BENCHMARKS["cruxeval-o"], prompt=lambda problem: variant_prompt(Triplet(problem["code"], problem["input"], "")))
original = model.sample_texts
decoders = {}
def with_int8(m, *a, **k):
    if id(m) not in decoders:
        decoders[id(m)] = model.int8_decoder(m)
    k["decoder"] = decoders[id(m)]
    return original(m, *a, **k)
model.sample_texts = with_int8
ev.main(["--bench", "cruxeval-o", "--data", os.path.join(ROOT, "data", "cruxeval-50.jsonl"), "--model", model_name,
         "--n", n, "--temperature", "1.0", "--max-new-tokens", "256", "--seed", "0", "--out", out,
         "--batch-size", "25", "--workers", "1"])
