"""The training loop: CLI errors, end to end with a scripted sampler, micro-batching, DDP, resume."""
import dataclasses
import functools
import json
import os
import re
import signal
import sys
import types

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

import azr
import buffers
import model as model_module
import rundir
from buffers import TaskBuffer, Triplet
from model import ModelConfig, Sample, Transformer, load_model
from tasks import TASKS
from trr import trr_advantages


# ----------------------------------------------------------------------------- a scripted sampler
PROGRAMS = [  # (program, input) templates the scripted proposer fills with a counter: all valid, all new
    ("def f(x):\n    return x * {k}", "3"),
    ("def f(s):\n    return s[::-1] + '{k}'", "'abc'"),
    ("def f(a, b):\n    return [a + i * {k} for i in range(b)]", "1, 3"),
    ("def f(n):\n    total = {k}\n    for i in range(n):\n        total += i * i\n    return total", "5"),
]


def fence(tag, body):
    return f"```{tag}\n{body}\n```"


def answer(*blocks):
    return "I reason about it.</think>\n<answer>\n" + "\n".join(blocks) + "\n</answer>"


def run_program(program, args):
    """Trusted test-side execution: the scripted programs are ours, never model-written."""
    scope = {}
    exec(program, scope)
    return eval(f"f({args})", scope)


class ScriptedSampler:
    """Stands in for model.generate: reads each prompt, answers from a script.

    Proposers alternate valid proposals with malformed ones; solvers alternate correct and wrong
    answers, so every group has reward variance and a non-zero advantage.
    """

    def __init__(self, tokenizer, kill_if=None, kill_signal=signal.SIGKILL):
        self.tokenizer, self.counter, self.kill_if, self.kill_signal = tokenizer, 0, kill_if, kill_signal

    def respond(self, prompt):
        self.counter += 1
        task = prompt.rsplit("User:", 1)[1]
        blocks = dict(re.findall(r"```(\w+)\n(.*?)\n```", task, re.DOTALL))
        good = self.counter % 2 == 0
        if "Create a new Python program" in task:
            program, args = PROGRAMS[(self.counter // 2) % len(PROGRAMS)]
            return answer(fence("python", program.format(k=self.counter)), fence("input", args)) if good else "no idea"
        if "different inputs for f" in task:
            inputs = [fence("input", repr("x" * i)) for i in range(1, 11)]
            return answer(*inputs, fence("message", "a hint")) if good else answer(*inputs[:3])
        if "Predict what this Python function returns" in task:
            value = run_program(blocks["python"], blocks["input"])
            return answer(fence("output", repr(value) if good else repr([value])))
        if "Find an input" in task:
            return answer(fence("input", blocks["output"] if "return a\n" in blocks["python"] + "\n" else "0"))
        program = "def f(a):\n    return a" if good else "def f(a):\n    return None"
        return answer(fence("python", program))

    def __call__(self, model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=(), n=1, seed=None,
                 cache=None, decoder=None):
        while self.kill_if is not None and self.kill_if():
            os.kill(os.getpid(), self.kill_signal)  # a run killed (or asked to stop) mid-step
        results = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)
            group = []
            for _ in range(n):
                tokens = self.tokenizer(self.respond(text)).input_ids[:max_new_tokens - 1] + [stop_ids[0]]
                group.append(Sample(tokens=tokens, logprobs=[0.0] * len(tokens)))
            results.append(group)
        return results


def tiny_config(checkpoint, out, **overrides):
    values = dict(model=str(checkpoint), device="cpu", out=str(out), steps=2, batch_size=4, num_references=2,
                  n_solve_samples=4, seed_size=3, seed_max_rounds=2, max_prompt_tokens=2048,
                  max_response_tokens=256, exec_timeout_s=2.0, exec_workers=2, lr=1e-3, micro_batch_size=3,
                  checkpoint_every=1, activation_checkpointing=False)
    values.update(overrides)
    return azr.Config(**values)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- CLI
def test_unknown_flag_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        azr.parse_config(["--no-such-flag", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_presets_and_overrides():
    cfg = azr.parse_config(["--device", "cpu", "--batch-size", "3", "--no-activation-checkpointing"])
    assert cfg.batch_size == 3 and cfg.activation_checkpointing is False
    assert cfg.max_response_tokens == azr.CPU_PRESET["max_response_tokens"]
    gpu = azr.parse_config(["--preset", "gpu"])
    assert (gpu.batch_size, gpu.n_solve_samples, gpu.num_references, gpu.lr) == (64, 8, 6, 1e-6)


def test_cpu_default_is_the_qwen_chat_model_with_warm_up():
    cfg = azr.parse_config(["--device", "cpu"])
    assert cfg.model == "qwen2.5-coder-0.5b-instruct" and cfg.prompt_format == "auto"
    assert [azr.learning_rate(cfg, step) for step in range(4)] == [cfg.lr / 2, cfg.lr, cfg.lr, cfg.lr]
    gpu = azr.parse_config(["--preset", "gpu"])
    assert gpu.lr_warmup_steps == 0 and azr.learning_rate(gpu, 0) == gpu.lr  # the paper: constant lr


def test_prompt_format_resolution(tiny_checkpoint, tmp_path):
    _, tokenizer = load_model(str(tiny_checkpoint))
    # a base checkpoint that ships a chat template still gets the paper's plain template under auto
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert azr.resolve_prompt_format("auto", str(tiny_checkpoint), tokenizer) == "plain"
    assert azr.resolve_prompt_format("auto", "qwen2.5-coder-0.5b-instruct", tokenizer) == "chat"
    assert azr.resolve_prompt_format("chat", str(tiny_checkpoint), tokenizer) == "chat"
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "config.json").write_text(json.dumps({"azr_prompt_format": "chat"}))
    assert azr.resolve_prompt_format("auto", str(recorded), tokenizer) == "chat"
    tokenizer.chat_template = None
    with pytest.raises(SystemExit, match="has no chat template"):
        azr.resolve_prompt_format("chat", str(tiny_checkpoint), tokenizer)


def test_default_run_directory_is_under_runs(tmp_path, monkeypatch):
    """Without --out the run goes to runs/<timestamp>, never into the working directory."""
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise FileNotFoundError("stop here")
    monkeypatch.setattr(azr, "load_model", no_model)
    cfg = azr.parse_config(["--device", "cpu"])
    with pytest.raises(SystemExit, match="stop here"):
        azr.train(cfg)
    assert cfg.out.startswith("runs" + os.sep) and os.path.isdir(tmp_path / cfg.out)
    assert os.listdir(tmp_path) == ["runs"]


def test_every_flag_has_a_help_text(capsys):
    with pytest.raises(SystemExit):
        azr.parse_config(["--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even inside hyphenated words
    for field in dataclasses.fields(azr.Config):
        assert field.metadata["help"].strip(), field.name
        assert "".join(field.metadata["help"].split()) in text, field.name
    assert "(default:500;cpupreset:6)" in text  # --steps shows both defaults


def one_line_error(argv, capsys):
    """The error azr.main(argv) stops with: its exit message, or argparse's last line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        azr.main(argv)
    code = exit_info.value.code
    assert code not in (0, None)
    text = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/model"], "--model must be an HF checkpoint directory (with config.json)"),
    (["--prompt-format", "fancy"], "--prompt-format must be auto, chat or plain"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--out", "/proc/azr-run"], "cannot write to --out"),
    (["--resume", "/nonexistent/run"], "not a run directory"),
])
def test_bad_input_fails_before_work(argv, message, capsys):
    assert message in one_line_error(argv, capsys)


# A value each flag must refuse. A field added to Config without an entry here, or without a check in
# azr.ALLOWED, fails test_every_flag_is_checked. (mini_batches ... compute_dtype: the lead's update fields.)
BAD_VALUES = {
    "model": "/nonexistent/model", "prompt_format": "fancy", "device": "tpu", "preset": "tpu",
    "out": "{a_file}", "resume": "/nonexistent/run", "seed_from": "/nonexistent/run", "plot": "/nonexistent/run",
    "log": "mlflow", "seed": "x", "steps": "0", "checkpoint_every": "0", "samples_per_step": "-1",
    "batch_size": "0", "num_references": "0", "n_solve_samples": "0", "seed_size": "0", "seed_max_rounds": "0",
    "max_prompt_tokens": "0", "max_response_tokens": "-5", "temperature": "-2", "top_p": "1.5",
    "format_penalty": "0.5", "wrong_penalty": "1", "invalid_penalty": "0.1", "unlearnable_penalty": "2",
    "exec_timeout_s": "0", "exec_workers": "-1", "exec_memory_mb": "16", "max_output_chars": "0", "lr": "-1",
    "lr_warmup_steps": "-1", "beta1": "1", "beta2": "-0.1", "weight_decay": "-0.1", "grad_clip": "0",
    "micro_batch_size": "0", "mini_batches": "0", "clip_ratio": "0", "entropy_coef": "-0.1",
    "compute_dtype": "float16", "generation_batch_size": "0", "activation_checkpointing": None, "int8_decode": None,
    "zero": None,
    "fsdp": None, "kv_cache_gib": "-1",
}


@pytest.mark.parametrize("name", [config_field.name for config_field in dataclasses.fields(azr.Config)])
def test_every_flag_is_checked(name, tmp_path, monkeypatch, capsys):
    """Each flag: its defaults pass; a bad value is a one-line error naming the flag, before any work."""
    assert name in azr.ALLOWED and name in BAD_VALUES
    allowed, test = azr.ALLOWED[name]
    assert test(getattr(azr.Config(), name)) and test(azr.CPU_PRESET.get(name, getattr(azr.Config(), name)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    flag = "--" + name.replace("_", "-")
    if BAD_VALUES[name] is None:  # a switch: argparse refuses a value for it
        argv = [f"{flag}=yes"]
    else:
        argv = [flag, BAD_VALUES[name].format(a_file=tmp_path / "a_file")]
    text = one_line_error(argv, capsys)
    assert flag in text, text
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no run directory: nothing was started


@pytest.mark.parametrize("value, message", [
    ("-1", "--lr must be > 0, not -1.0"), ("nan", "--lr must be a finite number, not nan"),
    ("inf", "--lr must be a finite number, not inf"), ("1e-5", None),
])
def test_learning_rate_range(value, message):
    assert azr.check_config(azr.parse_config(["--lr", value])) == (message and "azr: " + message)


def test_resumed_config_is_checked_too(tmp_path):
    """A hand-edited config.json of a run is held to the same rules as the flags."""
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": "8", "steps": 10}))
    assert azr.check_config(azr.parse_config(["--resume", str(tmp_path)])) == \
        "azr: --batch-size must be an integer, not '8'"
    (tmp_path / "config.json").write_text(json.dumps({"top_p": 0, "steps": 10}))
    assert azr.check_config(azr.parse_config(["--resume", str(tmp_path)])) == "azr: --top-p must be in (0, 1], not 0"


# ----------------------------------------------------------------------------- end to end
def test_two_steps_end_to_end(tiny_checkpoint, tmp_path):
    cfg = tiny_config(tiny_checkpoint, tmp_path / "run")
    initial, tokenizer = load_model(str(tiny_checkpoint))
    initial = {k: v.clone() for k, v in initial.state_dict().items()}
    model, buffer_map = azr.train(cfg, sample_fn=ScriptedSampler(tokenizer))

    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        # the script alternates: solvers right (1) and wrong (-0.5), proposers valid and malformed (-1);
        # a valid proposal's 4 learnability rollouts are half right, so s = 0.5 and r_propose = 0.5
        assert m["deduction/solve/reward"] == pytest.approx(0.25)
        assert m["deduction/solve/solve_rate"] == pytest.approx(0.5)
        assert m["deduction/propose/reward"] == pytest.approx(-0.25)
        assert m["deduction/propose/format_rate"] == pytest.approx(0.5)
        for task_type in ("deduction", "abduction"):
            assert m[f"{task_type}/propose/validity_rate"] == pytest.approx(0.5)
        assert m["induction/propose/format_rate"] == pytest.approx(0.5)
    # seeding plus two steps of valid proposals grew every buffer, on disk too
    for task_type in TASKS:
        assert len(buffer_map[task_type]) > 1
        on_disk = TaskBuffer(TASKS[task_type].task_class, str(tmp_path / "run" / f"buffer_{task_type}.jsonl"))
        assert len(on_disk) == len(buffer_map[task_type])
        assert os.path.isfile(tmp_path / "run" / "seeds" / f"{task_type}.jsonl")
    # rewards reached the update: the weights moved
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])]
    assert changed
    assert read_jsonl(tmp_path / "run" / "samples.jsonl")
    # the checkpoint is an HF checkpoint directory: our loader and transformers read the trained weights
    tokens = torch.randint(0, 49152, (2, 7))
    reloaded, _ = load_model(str(tmp_path / "run" / "checkpoint"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens), model(tokens))
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint")
        torch.testing.assert_close(hf(tokens).logits, model(tokens), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- a fourth task type
def type_name_solver_prompt(task):
    return ("Name the type of the value this Python function returns for the given input.\n\n"
            + fence("python", task.program) + "\n" + fence("input", task.input) + "\n\n"
            "Answer with the type's name:\n<answer>\n" + fence("type", "...") + "\n</answer>")


def type_name_check(task, name):
    """The executor compares what a wrapped f returns, the type name of the task's f(input), with the answer."""
    wrapped = task.program + "\n\n_f = f\n\n\ndef f(*args, **kwargs):\n    return type(_f(*args, **kwargs)).__name__"
    return ("check_output", wrapped, task.input, repr(name))


# Proposed as deduction is (a program and an input, triplets, seeded with them), solved differently.
TYPE_NAME = dataclasses.replace(
    TASKS["deduction"], references_from=("type_name",), solver_prompt=type_name_solver_prompt,
    parse_solution=functools.partial(buffers.parse_solver_answer, "type",
                                     lambda name: "" if name.isidentifier() else "not_a_name"),
    check_call=type_name_check)


class TypeNameSampler(ScriptedSampler):
    """The scripted sampler, answering the type-name prompt too: right and wrong in turn."""

    def respond(self, prompt):
        task = prompt.rsplit("User:", 1)[1]
        if "Name the type" not in task:
            return super().respond(prompt)
        self.counter += 1
        blocks = dict(re.findall(r"```(\w+)\n(.*?)\n```", task, re.DOTALL))
        name = type(run_program(blocks["python"], blocks["input"])).__name__
        return answer(fence("type", name if self.counter % 2 == 0 else "bytes"))


def test_a_fourth_task_type_is_one_record(tiny_checkpoint, tmp_path, monkeypatch):
    """A toy fourth type, "predict the type name of the output", added to TASKS and nowhere else, runs a
    self-play step: its proposals are validated and scored, its buffer is seeded and grows, its two
    groups get their metrics (the same numbers as deduction's: the script alternates as it does there)."""
    monkeypatch.setitem(TASKS, "type_name", TYPE_NAME)
    _, tokenizer = load_model(str(tiny_checkpoint))
    _, buffer_map = azr.train(tiny_config(tiny_checkpoint, tmp_path / "run", steps=1),
                              sample_fn=TypeNameSampler(tokenizer))
    [metrics] = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert metrics["type_name/solve/reward"] == pytest.approx(0.25)
    assert metrics["type_name/solve/solve_rate"] == pytest.approx(0.5)
    assert metrics["type_name/propose/reward"] == pytest.approx(-0.25)  # valid with s = 0.5, or malformed
    assert metrics["type_name/propose/validity_rate"] == pytest.approx(0.5)
    seeded = TaskBuffer(Triplet, str(tmp_path / "run" / "seeds" / "type_name.jsonl"))
    assert len(seeded) == 3 and len(buffer_map["type_name"]) == metrics["buffer/type_name"] > 3


def fixed_rollouts(count=8):
    """Deterministic rollouts of different lengths and groups for gradient comparisons."""
    generator = torch.Generator().manual_seed(0)
    rollouts = []
    for i in range(count):
        prompt = torch.randint(0, 49152, (5 + i % 3,), generator=generator).tolist()
        response = torch.randint(0, 49152, (2 + (i * 5) % 7,), generator=generator).tolist()
        rollouts.append(azr.Rollout(list(TASKS)[i % 3], ("propose", "solve")[i % 2], prompt, response, "",
                                    reward=float(i % 4) - 1.5))
    return rollouts


def gradient(model, logprob_module, rollouts, world, micro_batch_size):
    """Gradient of the TRR++ loss for this rank's slice of `rollouts` (all of them when world is 1)."""
    cfg = azr.Config(micro_batch_size=micro_batch_size)
    model.zero_grad(set_to_none=True)
    advantages = trr_advantages([r.reward for r in rollouts], [r.group for r in rollouts])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    mine = list(range(rank, len(rollouts), world))
    num_tokens = sum(len(r.response_tokens) for r in rollouts)
    my_rollouts = [rollouts[i] for i in mine]
    batches = azr.micro_batches(my_rollouts, range(len(mine)), cfg, logprob_module)
    azr.accumulate_gradients(logprob_module, my_rollouts, batches, advantages[mine], None, num_tokens, world, cfg,
                             torch.device("cpu"))
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_independent_of_micro_batch_size(tiny_checkpoint):
    model, _ = load_model(str(tiny_checkpoint))
    module = azr.TokenLogprobs(model)
    whole = gradient(model, module, fixed_rollouts(), 1, micro_batch_size=8)
    split = gradient(model, module, fixed_rollouts(), 1, micro_batch_size=2)
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in whole.values())


def test_one_mini_batch_gives_the_reinforce_gradient(tiny_checkpoint):
    """--mini-batches 1 without entropy: exactly the gradient of -(1/N) sum A log pi, computed here
    straight from the model's log-probs."""
    model, _ = load_model(str(tiny_checkpoint))
    rollouts = fixed_rollouts()
    cfg = azr.Config(micro_batch_size=3, mini_batches=1, entropy_coef=0.0)
    advantages = trr_advantages([r.reward for r in rollouts], [r.group for r in rollouts])
    num_tokens = sum(len(r.response_tokens) for r in rollouts)
    module = azr.TokenLogprobs(model)
    batches = azr.micro_batches(rollouts, range(len(rollouts)), cfg, module)
    azr.accumulate_gradients(module, rollouts, batches, advantages, None, num_tokens, 1, cfg, torch.device("cpu"))
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for prefix_length, rows in batches:
        tokens, mask, prefix = azr.micro_batch(rollouts, prefix_length, rows, torch.device("cpu"))
        logprobs = model.token_logprobs(tokens, mask, prefix=prefix)
        (-(logprobs * advantages[rows][:, None] * mask).sum() / num_tokens).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-6, atol=1e-9)
    assert any(g.abs().sum() > 0 for g in ours.values())


def test_cpu_sampler_decodes_the_trained_weights():
    """On CPU in the trained weights' dtype the sampler decodes the trained model itself, so an update
    reaches it with nothing copied; in another dtype it gets its own copy, refreshed after an update."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=8))
    cpu = torch.device("cpu")
    assert azr.sampler_model(model, cpu, torch.float32) is model
    copy = azr.sampler_model(model, cpu, torch.bfloat16)
    assert copy is not model
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert not torch.equal(copy.lm_head.weight, model.lm_head.weight.bfloat16())
    azr.refresh_sampler_model(copy, model)
    assert torch.equal(copy.lm_head.weight, model.lm_head.weight.bfloat16())


def test_mini_batches_take_one_adamw_step_each():
    """--mini-batches 3: three optimizer steps in one training step; after the first, ratios move away
    from 1, and with a large lr some tokens are clipped."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=8))
    rollouts = fixed_rollouts(9)
    cfg = azr.Config(micro_batch_size=2, mini_batches=3, lr=0.1)
    optimizer = azr.make_optimizer(model, cfg, 1)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    update = azr.policy_update(model, azr.TokenLogprobs(model), optimizer, rollouts, cfg, 0, 1, torch.device("cpu"))
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {3}
    assert update["grad_norm"] > 0
    assert 0 < update["clip_fraction"] <= 1
    assert azr.mini_batch_slices(7, 3) == [[0, 1], [2, 3], [4, 5, 6]]


def shared_prefix_rollouts():
    """Rollouts shaped like a step's: three proposer prompts of one type sharing their instructions
    (40 tokens), a solver task's four rollouts sharing its whole prompt, another's two, a solver task
    alone, and two prompts that share nothing; responses of different lengths, rewards that differ
    within each (type, role) group."""
    generator = torch.Generator().manual_seed(1)

    def tokens(count):
        return torch.randint(0, 49152, (count,), generator=generator).tolist()

    prompts = []
    instructions = tokens(40)
    for tail in (12, 20, 9):
        prompts.append(("deduction", "propose", instructions + tokens(tail)))
    for task_type, length, count in (("deduction", 25, 4), ("abduction", 18, 2), ("induction", 30, 1)):
        prompt = tokens(length)
        prompts += [(task_type, "solve", prompt)] * count
    prompts += [("abduction", "propose", tokens(33)), ("induction", "propose", tokens(21))]
    rollouts = []
    for index, (task_type, role, prompt) in enumerate(prompts):
        rollouts.append(azr.Rollout(task_type, role, prompt, tokens(3 + (index * 7) % 11), "",
                                    reward=float(index % 3) - 1.0))
    return rollouts


def update_pass(model, rollouts, cfg):
    """pi_old and the clipped-surrogate gradient of one mini-batch over `rollouts`, as policy_update
    runs them -> (micro-batches, {rollout index: its response tokens' pi_old}, {name: gradient}). The
    gradient is taken against pi_old moved by +0.3 on even rollouts and -0.3 on odd ones, so that
    some tokens are clipped."""
    module = azr.TokenLogprobs(model)
    device = torch.device("cpu")
    advantages = trr_advantages([r.reward for r in rollouts], [r.group for r in rollouts])
    num_tokens = sum(len(r.response_tokens) for r in rollouts)
    batches = azr.micro_batches(rollouts, range(len(rollouts)), cfg, module)
    old = azr.old_logprobs(module, rollouts, batches, cfg, device)
    per_rollout = {}
    moved = []
    for (prefix_length, rows), old_logprobs in zip(batches, old):
        _, mask, _ = azr.micro_batch(rollouts, prefix_length, rows, device)
        for row, i in enumerate(rows):
            per_rollout[i] = old_logprobs[row][mask[row] > 0]
        shift = torch.tensor([0.3 if i % 2 == 0 else -0.3 for i in rows])[:, None]
        moved.append(old_logprobs + shift)
    model.zero_grad(set_to_none=True)
    clipped = azr.accumulate_gradients(module, rollouts, batches, advantages, moved, num_tokens, 1, cfg, device)
    assert clipped > 0
    return batches, per_rollout, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_shared_prefix_update_equals_the_plain_update(monkeypatch, entropy_coef):
    """The update with shared prefixes (model.shared_prefix_groups' groups, each prefix run once) gives
    pi_old equal to the plain forward's (<= 1e-5) and the same gradient (relative error <= 1e-5 per
    parameter tensor); its micro-batches keep each group together within the bounds micro_batches
    states, and the plain ones are micro_batch_size rollouts in length order, as before."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2, head_dim=8))
    rollouts = shared_prefix_rollouts()
    cfg = azr.Config(micro_batch_size=2, entropy_coef=entropy_coef)
    shared_batches, shared_old, shared_grads = update_pass(model, rollouts, cfg)
    monkeypatch.setattr(model_module, "SHARED_PREFIX_GROUP_COST", 10 ** 9)  # no group pays: the plain forward
    plain_batches, plain_old, plain_grads = update_pass(model, rollouts, cfg)

    def length(i):
        return len(rollouts[i].prompt_tokens) + len(rollouts[i].response_tokens)

    by_length = sorted(range(len(rollouts)), key=length)
    assert plain_batches == [(0, by_length[k:k + 2]) for k in range(0, 12, 2)]
    # each solver task's rollouts share its prompt but the last token, the proposers their instructions;
    # the lone solver task and the two unrelated proposers share nothing
    assert sorted((prefix, sorted(rows)) for prefix, rows in shared_batches) == [
        (0, [9]), (0, [10, 11]), (17, [7, 8]), (24, [3, 4, 5, 6]), (40, [0, 1, 2])]
    most_tokens = 2 * max(length(i) for i in range(len(rollouts)))
    for prefix, rows in shared_batches:
        assert azr.micro_batch_tokens(rollouts, prefix, rows) <= most_tokens

    for i in range(len(rollouts)):
        assert shared_old[i].shape == (len(rollouts[i].response_tokens),)
        assert (shared_old[i] - plain_old[i]).abs().max() <= 1e-5
    for name, grad in plain_grads.items():
        assert grad.norm() > 0, name
        assert (shared_grads[name] - grad).norm() <= 1e-5 * grad.norm(), name


# ----------------------------------------------------------------------------- two ranks (gloo)
def ddp_worker(rank, world, port, checkpoint, out, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tokenizer = load_model(str(checkpoint))
        module = torch.nn.parallel.DistributedDataParallel(azr.TokenLogprobs(model))
        grads = gradient(model, module, fixed_rollouts(), world, micro_batch_size=2)
        shared_grads = gradient(model, module, shared_prefix_rollouts(), world, micro_batch_size=2)
        trained, buffer_map = azr.train(tiny_config(checkpoint, out, steps=1), sample_fn=ScriptedSampler(tokenizer))
        torch.save({"grads": grads, "shared_grads": shared_grads, "params": trained.state_dict(),
                    "buffers": {t: [vars(task) for task in buffer_map[t]] for t in TASKS}},
                   os.path.join(results, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_gloo(tiny_checkpoint, tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(ddp_worker, args=(2, port, str(tiny_checkpoint), str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    assert ranks[0]["buffers"] == ranks[1]["buffers"]
    assert len(ranks[0]["buffers"]["deduction"]) > 1
    # the two-rank gradient equals the single-process gradient of the same rollouts, also where
    # rollouts share prompt prefixes (each rank's groups are its share of them)
    model, _ = load_model(str(tiny_checkpoint))
    single = gradient(model, azr.TokenLogprobs(model), fixed_rollouts(), 1, micro_batch_size=8)
    for name, value in single.items():
        torch.testing.assert_close(ranks[0]["grads"][name], value, rtol=1e-4, atol=1e-7)
    single = gradient(model, azr.TokenLogprobs(model), shared_prefix_rollouts(), 1, micro_batch_size=8)
    for name, value in single.items():
        torch.testing.assert_close(ranks[0]["shared_grads"][name], value, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- resume
class GrewDuringStepTwo:
    """True once step 1 is logged and the deduction buffer has grown since: step 2 added its tasks."""

    def __init__(self, out):
        self.out, self.size_after_step_one = out, None

    def __call__(self):
        if not os.path.isfile(os.path.join(self.out, "metrics.jsonl")):
            return False
        size = len(read_jsonl(os.path.join(self.out, "buffer_deduction.jsonl")))
        self.size_after_step_one = self.size_after_step_one or size
        return size > self.size_after_step_one


def killed_run(checkpoint, out):
    _, tokenizer = load_model(str(checkpoint))
    azr.train(tiny_config(checkpoint, out, steps=3), sample_fn=ScriptedSampler(tokenizer, GrewDuringStepTwo(out)))


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    # die in step 2's solve call: after its new tasks were written to the buffers, before its checkpoint
    process = mp.get_context("spawn").Process(target=killed_run, args=(str(tiny_checkpoint), str(out)))
    process.start()
    process.join(timeout=300)
    assert process.exitcode == -signal.SIGKILL
    before = {t: read_jsonl(out / f"buffer_{t}.jsonl") for t in TASKS}
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]
    seeded = read_jsonl(out / "seeds" / "deduction.jsonl")
    assert len(before["deduction"]) > len(seeded) + 2  # steps 1 and 2 both added tasks

    _, tokenizer = load_model(str(tiny_checkpoint))
    cfg = azr.parse_config(["--resume", str(out), "--steps", "3"])
    _, buffer_map = azr.train(cfg, sample_fn=ScriptedSampler(tokenizer))
    for task_type in TASKS:  # every entry written before the kill survives, in order
        after = [vars(task) for task in buffer_map[task_type]]
        assert after[:len(before[task_type])] == before[task_type]
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 3


# ----------------------------------------------------------------------------- stopping on SIGTERM
class Times:
    """True for the first `times` calls on which `condition()` holds, then False: that many signals, sent
    one after the other (the scripted sampler signals while its kill_if holds)."""

    def __init__(self, condition, times=1):
        self.condition, self.left = condition, times

    def __call__(self):
        if self.left and self.condition():
            self.left -= 1
            return True
        return False


class StepOneLogged:
    """True once step 1's metrics line is written; remembers the buffer sizes at that moment."""

    def __init__(self, out):
        self.out, self.sizes = out, None

    def __call__(self):
        if not os.path.isfile(os.path.join(self.out, "metrics.jsonl")):
            return False
        self.sizes = {t: len(read_jsonl(os.path.join(self.out, f"buffer_{t}.jsonl"))) for t in TASKS}
        with open(os.path.join(self.out, "sizes_when_signalled.json"), "w") as f:
            json.dump(self.sizes, f)
        return True


def signalled_run(checkpoint, out, when, times):
    """A 3-step run (checkpoints every 10 steps: only the stop writes one) sent SIGTERM `times` times: in
    step 2's solve phase, after its tasks joined the buffers ("after buffers"), or in its propose phase,
    the first sampling after step 1 ("before buffers")."""
    _, tokenizer = load_model(str(checkpoint))
    condition = GrewDuringStepTwo(out) if when == "after buffers" else StepOneLogged(out)
    sampler = ScriptedSampler(tokenizer, Times(condition, times), kill_signal=signal.SIGTERM)
    azr.main(["--model", str(checkpoint), "--device", "cpu", "--out", str(out), "--steps", "3",
              "--checkpoint-every", "10", "--batch-size", "4", "--num-references", "2", "--n-solve-samples", "4",
              "--seed-size", "3", "--seed-max-rounds", "2", "--max-prompt-tokens", "2048",
              "--max-response-tokens", "256", "--exec-timeout-s", "2", "--exec-workers", "2", "--lr", "1e-3",
              "--micro-batch-size", "3", "--no-activation-checkpointing"], sample_fn=sampler)


def run_signalled(checkpoint, out, when, times):
    process = mp.get_context("spawn").Process(target=signalled_run, args=(str(checkpoint), str(out), when, times))
    process.start()
    process.join(timeout=300)
    return process.exitcode


def resume_to_step_three(checkpoint, out):
    _, tokenizer = load_model(str(checkpoint))
    _, buffer_map = azr.train(azr.parse_config(["--resume", str(out), "--steps", "3"]),
                              sample_fn=ScriptedSampler(tokenizer))
    return buffer_map


def optimizer_steps(out):
    """Training steps behind the checkpoint, from AdamW's own count of its updates (each parameter's
    state counts its steps; a training step takes one per mini-batch)."""
    state = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=False)["state"]
    mini_batches = azr.CPU_PRESET["mini_batches"]
    return {int(param_state["step"]) / mini_batches for param_state in state.values()}


@pytest.mark.slow
def test_sigterm_finishes_the_step_then_resume_continues(tiny_checkpoint, tmp_path):
    """SIGTERM after step 2 changed the buffers: step 2 is finished and checkpointed, the run exits 128 + 15;
    --resume runs step 3 only, so every step is logged once and AdamW counts 3 steps' updates."""
    out = tmp_path / "run"
    assert run_signalled(tiny_checkpoint, out, "after buffers", times=1) == 128 + signal.SIGTERM
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 2
    assert optimizer_steps(out) == {2}
    before = {t: read_jsonl(out / f"buffer_{t}.jsonl") for t in TASKS}

    buffer_map = resume_to_step_three(tiny_checkpoint, out)
    for task_type in TASKS:
        after = [vars(task) for task in buffer_map[task_type]]
        assert after[:len(before[task_type])] == before[task_type]
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    samples_per_step = [sum(s["step"] == step for s in read_jsonl(out / "samples.jsonl")) for step in (1, 2, 3)]
    assert samples_per_step[0] > 0 and len(set(samples_per_step)) == 1
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 3
    assert optimizer_steps(out) == {3}


@pytest.mark.slow
def test_sigterm_before_the_buffers_change_gives_up_the_step(tiny_checkpoint, tmp_path):
    """SIGTERM in step 2's propose phase: the step is given up at once (nothing of it reached the buffers),
    step 1 is checkpointed, and --resume redoes step 2 whole."""
    out = tmp_path / "run"
    assert run_signalled(tiny_checkpoint, out, "before buffers", times=1) == 128 + signal.SIGTERM
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]
    sizes = json.loads((out / "sizes_when_signalled.json").read_text())
    assert {t: len(read_jsonl(out / f"buffer_{t}.jsonl")) for t in TASKS} == sizes
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 1
    assert optimizer_steps(out) == {1}

    resume_to_step_three(tiny_checkpoint, out)
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert optimizer_steps(out) == {3}


@pytest.mark.slow
def test_second_sigterm_exits_at_once(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert run_signalled(tiny_checkpoint, out, "before buffers", times=2) == -signal.SIGTERM
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1]
    assert not os.path.exists(out / "checkpoint")  # every 10 steps: none yet, and the stop did not get to write one


def agreement_worker(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        azr.STOP.signal = signal.SIGTERM if rank == 1 else None  # the signal reached rank 1 only
        with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
            json.dump(azr.stop_requested(), f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_every_rank_agrees_to_stop(tmp_path):
    mp.spawn(agreement_worker, args=(2, 29500 + (os.getpid() + 7) % 1000, str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)] == [True, True]


# ----------------------------------------------------------------------------- --log tensorboard / wandb
class FakeSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: records what it is given."""
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.texts, self.closed = log_dir, {}, {}, False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars[(tag, step)] = value

    def add_text(self, tag, text, step):
        self.texts[(tag, step)] = text

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_log_tensorboard_gets_the_metrics_lines(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    FakeSummaryWriter.instances = []
    cfg = tiny_config(tiny_checkpoint, tmp_path / "run", log="tensorboard")
    assert azr.check_config(cfg) is None
    _, tokenizer = load_model(str(tiny_checkpoint))
    azr.train(cfg, sample_fn=ScriptedSampler(tokenizer))
    [writer] = FakeSummaryWriter.instances
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard") and writer.closed
    expected = {}
    for line in read_jsonl(tmp_path / "run" / "metrics.jsonl"):
        for key, value in line.items():
            if key != "step" and value is not None:
                expected[(key, line["step"])] = value
    assert writer.scalars == expected
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    first = samples[0]
    text = writer.texts[(f"samples/{first['task_type']}/{first['role']}", first["step"])]
    assert f"reward {first['reward']:+.2f}" in text and first["response"].splitlines()[0] in text


def test_log_wandb_with_a_fake_module(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    def table(columns, data):
        return {"columns": columns, "data": data}
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Table=table))
    cfg = azr.Config(out=str(tmp_path), log="wandb")
    assert azr.check_config(cfg) is None
    metrics = {"step": 3, "deduction/solve/reward": 0.25, "deduction/solve/solve_rate": None, "grad_norm": 1.5}
    samples = [{"step": 3, "task_type": "deduction", "role": "solve", "reward": 1.0, "response": "<answer>1</answer>"}]
    for _ in range(2):  # a resumed run continues the same W&B run
        log = rundir.open_external_log(cfg)
        rundir.write_step_logs(str(tmp_path), metrics, samples, log)
        log.close()
    inits = [call[1] for call in calls if call[0] == "init"]
    assert inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow" and inits[0]["config"]["log"] == "wandb"
    logged = [call for call in calls if call[0] == "log"]
    assert logged[0][2] == 3
    assert {k: v for k, v in logged[0][1].items() if k != "samples"} == {"deduction/solve/reward": 0.25,
                                                                        "grad_norm": 1.5}
    assert logged[0][1]["samples"]["data"] == [["deduction", "solve", 1.0, "<answer>1</answer>"]]
    assert read_jsonl(tmp_path / "metrics.jsonl") == [metrics, metrics]  # the record is written either way


def test_log_without_its_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert azr.check_config(azr.Config(log="wandb")) == "azr: --log wandb needs its package: pip install wandb"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert azr.check_config(azr.Config(log="tensorboard")) == \
        "azr: --log tensorboard needs its package: pip install tensorboard"
