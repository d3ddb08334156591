"""Every benchmark in bench/ starts: `--help`, and a tiny run on a tiny random model (smoke tests; the
figures themselves are in README.md)."""
import json
import os
import subprocess
import sys

import pytest

from buffers import TaskBuffer
from tasks import ROLES, TASKS
from test_model import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = ["sampler.py", "memory.py", "executor.py", "prompts.py", "gpu_check.py", "step_profile.py", "update.py"]


def run_bench(name, *args, timeout=240):
    """-> stdout of `python bench/<name> args`; fails the test with stderr's tail if it fails."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", name), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(text):
    """The data rows of the markdown tables in `text`."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---") and not line.startswith("| batch |") \
                and "---:" not in line:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("name", BENCHES)
def test_bench_help(name):
    assert "usage:" in run_bench(name, "--help")


@pytest.fixture(scope="module")
def tiny_config_json(tmp_path_factory):
    """A random-weight Qwen2 config, far smaller than any real one."""
    path = tmp_path_factory.mktemp("tiny-config") / "tiny-qwen2.json"
    config = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=TINY["vocab_size"],
                  hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_bench_sampler_tiny_run(tiny_config_json):
    out = run_bench("sampler.py", "--model", tiny_config_json, "--device", "cpu", "--batch-sizes", "1,3",
                    "--new-tokens", "3")
    rows = [row for row in table_rows(out) if row[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "3"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)


def test_bench_memory_tiny_run():
    out = run_bench("memory.py", os.path.join(ROOT, "data", "configs", "qwen2.5-0.5b.json"), "--gpus", "8")
    rows = [row for row in table_rows(out) if row[0] == "qwen2.5-0.5b"]
    assert [row[3] for row in rows] == ["DDP", "DDP + --zero", "--fsdp"]
    assert rows[0][1] == "0.49 B"


def test_bench_executor_tiny_run():
    out = run_bench("executor.py", "--calls", 4, "--workers", 1, "--runs", 1, "--timeout", 1.0)
    rows = table_rows(out)
    assert any(row[0] == "validate, trivial" and row[-1] == "ok 4" for row in rows)
    assert any(row[0].startswith("check_program") for row in rows)


@pytest.mark.slow
def test_bench_prompts_tiny_run(tiny_checkpoint, tmp_path):
    for task_type, kind in TASKS.items():
        TaskBuffer(kind.task_class, str(tmp_path / f"{task_type}.jsonl")).add(kind.identity_seed())
    out = run_bench("prompts.py", "--seeds", tmp_path, "--model", tiny_checkpoint, "--samples", 2,
                    "--max-new-tokens", 4)
    rows = [row for row in table_rows(out) if row[0] in TASKS]
    assert [(row[0], row[1]) for row in rows] == [(t, role) for t in TASKS for role in ROLES]
    assert all(row[2].endswith("/2") for row in rows)


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    """bench/gpu_check.sh --cpu: every step of the script, azr.py runs included, on tiny CPU configs.
    On a CPU the 'graph' cache is the bucketed eager one, so graph == eager holds trivially: what this
    checks is that every step runs to its figures."""
    figures = tmp_path / "figures.txt"
    result = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--cpu", str(figures)], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    text = figures.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "0 failed steps" in text and text.count("\nok, ") == 5
    assert "ERROR" not in text and " FAIL" not in text
    assert text.count("PASS") == 2 * 2 + 1 + 1  # decode: 2 configs x (greedy, T=1); refresh; train
    assert "| 64 | 64 |" in text  # the speed table's last row
    assert "run fsdp: steps [1, 2, 3], checkpoint at step 3" in text  # two steps, then resumed to the third
    assert "run plain: steps [1], checkpoint at step 1" in text
    assert "KV cache: " in text and "| 1 |" in text  # azr's cache line; bench/sampler.py's table


@pytest.mark.slow
def test_bench_step_profile_tiny_run(tiny_checkpoint):
    """One self-play step of a tiny random model from the committed seed buffers: every phase of the
    table is there, and the step's time is at least its parts'."""
    out = run_bench("step_profile.py", "--model", tiny_checkpoint, "--seed-from", os.path.join(ROOT, "docs", "cpu-run"),
                    "--limit-seconds", "0.2", "--set", "batch_size=2", "--set", "max_response_tokens=4",
                    "--set", "n_solve_samples=2", timeout=600)
    seconds = {}  # the table's rows: name (34 characters), then seconds (10)
    for line in out.splitlines():
        seconds[line[:34].strip()] = line[34:44]
    for name in ("propose: prefill", "propose: decode", "propose (wall)", "solve: prefill", "solve: decode",
                 "solve (wall)", "update: forward", "update: optimizer", "sampler refresh",
                 "step (wall, without checkpoint)"):
        assert name in seconds, (name, out)
        seconds[name] = float(seconds[name])
    parts = seconds["propose (wall)"] + seconds["solve (wall)"] + seconds["update: optimizer"]
    assert seconds["step (wall, without checkpoint)"] >= parts > 0


@pytest.mark.slow
def test_bench_update_tiny_run(tiny_checkpoint):
    """The shared-prefix update against the plain one on small rollouts of a tiny random model: the
    shared mode runs fewer tokens."""
    out = run_bench("update.py", "--model", tiny_checkpoint, "--threads", 1, "--proposers", 2,
                    "--proposer-prompt", "40,40,30", "--proposer-prefix", "30,20,10", "--tasks", 1,
                    "--solver-group", 3, "--solver-prompt", 20, "--response", 8)
    tokens = {row[0]: int(row[1]) for row in table_rows(out) if row[0] in ("plain", "shared")}
    assert set(tokens) == {"plain", "shared"}
    assert 0 < tokens["shared"] < tokens["plain"]
