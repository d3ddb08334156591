"""The math judge of the paper's six math sets, run in the sandbox by evals/math_sets.py (math-verify parses
with sympy, which evaluates what it parses). Reads a list of {pred, gold, unit}; prints one JSON verdict per
item, in order."""

import json
import sys

from math_verify import parse, verify


def without_unit(answer, unit):
    # OlympiadBench's rule: the answer is judged without its unit (the problem states it)
    unit = unit.replace("$", "").strip()
    if not unit:
        return answer
    for written in ("\\text{ " + unit + "}", "\\text{" + unit + "}", "\\mathrm{" + unit + "}", unit):
        if answer.endswith(written):
            return answer[:-len(written)].rstrip(" ~\\,;")
    return answer


def judge(item):
    pred = without_unit(item["pred"].replace("$", "").strip(), item["unit"])
    gold = item["gold"].replace("$", "").strip()
    if not pred:
        return False
    if pred.replace(" ", "") == gold.replace(" ", ""):
        return True  # same text: right even where math-verify cannot parse it
    return bool(verify(parse("$" + gold + "$"), parse("$" + pred + "$")))


for item in json.loads(sys.stdin.read()):
    try:
        verdict = judge(item)
    except Exception:
        verdict = False
    print(json.dumps(verdict), flush=True)
