"""The benchmarks eval.py runs: one module per benchmark family, each holding one `Benchmark` record per
benchmark (how to load its file, prompt for a problem, read the answer out of a response and score the
answers), and `drivers/`, the programs that run inside the sandbox, kept as Python files and sent as text.
eval.py maps the names to the records in one dict, BENCHMARKS; common.py holds what the modules share."""
