"""Summarize eval.py reports of CRUXEval-O: format rate, pass@1, pass@1 among well-formed answers, problems
with a right answer; given two reports (base, trained), the differences in standard errors as README computes
them (problems as the unit, the arms independent: sqrt(p1 (1 - p1) / N + p2 (1 - p2) / N)).
    python docs/cpu-run-2/prompt-probes/summarize.py BASE.json [TRAINED.json]"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
from evals.cruxeval import well_formed  # noqa: E402


def summary(path):
    report = json.load(open(path))["benchmarks"]["cruxeval-o"]
    answers = 0
    formed = 0
    right = 0
    formed_right = 0
    problems_right = 0
    for pid, scores in report["scores"].items():
        problems_right += any(scores)
        for score, response in zip(scores, report["responses"][pid]):
            answers += 1
            right += score
            if well_formed(response, "deduction"):
                formed += 1
                formed_right += score
    return {"problems": len(report["scores"]), "format": formed / answers, "pass@1": right / answers,
            "among well-formed": formed_right / max(1, formed), "problems right": problems_right}


def difference(base, trained, key):
    """(difference, its standard error), both as fractions."""
    n = base["problems"]
    p1 = base[key]
    p2 = trained[key]
    return p2 - p1, math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)


results = [summary(path) for path in sys.argv[1:]]
for path, result in zip(sys.argv[1:], results):
    print(f"{path}: format {100 * result['format']:.1f}%  pass@1 {100 * result['pass@1']:.1f}%  among well-formed "
          f"{100 * result['among well-formed']:.1f}%  problems right {result['problems right']}/{result['problems']}")
if len(results) == 2:
    for key in ("format", "pass@1"):
        delta, se = difference(results[0], results[1], key)
        print(f"{key}: {100 * delta:+.1f} ({100 * se:.1f}), {delta / se:.1f} SE")
