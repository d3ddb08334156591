"""Decodes LiveCodeBench's private tests, run in the sandbox by evals/livecodebench.py: they are
base64(zlib(pickle(JSON text))), and unpickling runs code, so it happens here and never in the evaluator.
Reads {blob, start, stop}; prints {"count", "tests": [start:stop]}."""

import base64
import json
import pickle
import sys
import zlib

request = json.loads(sys.stdin.read())
tests = json.loads(pickle.loads(zlib.decompress(base64.b64decode(request["blob"]))))
print(json.dumps({"count": len(tests), "tests": tests[request["start"]:request["stop"]]}))
