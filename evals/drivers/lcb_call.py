"""The caller of a functional (LeetCode) LiveCodeBench solution. evals/livecodebench.py appends this text and
one line `_lcb_call(name, arguments)` to the solution, and runs the whole in the sandbox: the method (of a
`Solution` instance, else a top-level function) is called on the JSON arguments (one per line) and its result
printed as JSON on the last line; the method's own prints are not its answer."""
import io as _io
import json as _json
import sys as _sys


def _lcb_call(name, arguments):
    solution_class = globals().get("Solution")
    target = solution_class() if isinstance(solution_class, type) else None
    method = getattr(target, name) if target is not None else globals()[name]
    values = [_json.loads(line) for line in arguments.split("\n")]
    stdout = _sys.stdout
    _sys.stdout = _io.StringIO()
    result = method(*values)
    _sys.stdout = stdout
    if isinstance(result, tuple):
        result = list(result)
    print("\n" + _json.dumps(result))
