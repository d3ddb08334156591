"""The run directory: everything a training run writes to disk and reads back.

    RUN/config.json                     the full config; --resume reads it back
    RUN/buffer_<type>.jsonl             the task buffers, appended as tasks are added
    RUN/seeds/<type>.jsonl              the buffers as seeding left them (--resume, --seed-from)
    RUN/metrics.jsonl, samples.jsonl    one metrics line per step; a few decoded responses per group
    RUN/checkpoint/                     HF checkpoint directory + optimizer state, RNG states and step
    RUN/metrics.png                     `python azr.py --plot RUN`
    RUN/tensorboard/, RUN/wandb/         with --log tensorboard / --log wandb: the same metrics and samples

azr.py calls these functions; nothing here samples or trains. Rank 0 writes; under --fsdp and --zero
every rank takes part in saving and loading the sharded optimizer state.
"""
import contextlib
import dataclasses
import importlib
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

from buffers import TaskBuffer
from model import Transformer, save_hf_checkpoint
from tasks import ROLES, TASKS


# ----------------------------------------------------------------------------- the directory and config
def prepare_run_dir(cfg):
    """Create (or check) the run directory before any work; returns a one-line error or None.
    Sets cfg.out to runs/<timestamp> when it was not given."""
    if not cfg.out:
        cfg.out = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if not cfg.resume and os.path.exists(os.path.join(cfg.out, "config.json")):
        return f"azr: {cfg.out} already holds a run; pass --resume {cfg.out} or choose another --out"
    try:
        os.makedirs(cfg.out, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg.out).close()  # can we write there?
    except OSError as error:
        return f"azr: cannot write to --out {cfg.out}: {error.strerror}"
    return None


def save_config(cfg):
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)


# ----------------------------------------------------------------------------- buffers and seeds
def open_buffers(cfg, rank):
    """One JSONL-backed buffer per task type; an empty one starts with its identity seed.

    Rank 0 owns the files (it copies --seed-from seeds, repairs a torn last line, appends); the
    other ranks load the same content afterwards and keep their copies in memory only.
    """
    if rank == 0 and cfg.seed_from and not cfg.resume:
        for task_type in TASKS:
            shutil.copyfile(os.path.join(cfg.seed_from, "seeds", f"{task_type}.jsonl"),
                            os.path.join(cfg.out, f"buffer_{task_type}.jsonl"))
    if rank == 0:
        buffer_map = load_buffers(cfg.out, writable=True)
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        buffer_map = load_buffers(cfg.out, writable=False)
    return buffer_map


def load_buffers(run_dir, writable):
    buffer_map = {}
    for task_type, kind in TASKS.items():
        buffer = TaskBuffer(kind.task_class, os.path.join(run_dir, f"buffer_{task_type}.jsonl"))
        if not writable:
            buffer.path = None  # loaded; appends stay in memory
        if len(buffer) == 0:
            buffer.add(kind.identity_seed())
        buffer_map[task_type] = buffer
    return buffer_map


def has_seeds(run_dir):
    return os.path.isdir(os.path.join(run_dir, "seeds"))


def save_seeds(run_dir, buffer_map):
    """Copy the seeded buffers to run_dir/seeds (atomically) for --resume and --seed-from."""
    seeds_dir = os.path.join(run_dir, "seeds")
    os.makedirs(seeds_dir + ".tmp", exist_ok=True)
    for task_type in TASKS:
        shutil.copyfile(buffer_map[task_type].path, os.path.join(seeds_dir + ".tmp", f"{task_type}.jsonl"))
    os.replace(seeds_dir + ".tmp", seeds_dir)


# ----------------------------------------------------------------------------- metrics and samples
def group_metrics(summaries):
    """Per (type, role) group: mean reward, format-error rate, validity, solve rate, length."""
    metrics = {}
    for task_type in TASKS:
        for role in ROLES:
            name = f"{task_type}/{role}"
            group = [s for s in summaries if s["group"] == name]
            if not group:
                continue
            solve_rates = [s["solve_rate"] for s in group if s["solve_rate"] is not None]
            metrics[f"{name}/reward"] = sum(s["reward"] for s in group) / len(group)
            metrics[f"{name}/format_rate"] = sum(s["format_ok"] for s in group) / len(group)
            if solve_rates:
                metrics[f"{name}/solve_rate"] = sum(solve_rates) / len(solve_rates)
            else:
                metrics[f"{name}/solve_rate"] = None
            metrics[f"{name}/response_length"] = sum(s["length"] for s in group) / len(group)
            if role == "propose":
                metrics[f"{name}/validity_rate"] = sum(s["valid"] for s in group) / len(group)
    return metrics


def write_json_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_step_logs(run_dir, metrics, samples, external_log=None):
    """Append the step's metrics line and its sample responses; then send them to --log's logger too."""
    write_json_line(os.path.join(run_dir, "metrics.jsonl"), metrics)
    for sample in samples:
        write_json_line(os.path.join(run_dir, "samples.jsonl"), sample)
    if external_log is not None:
        external_log.log_step(metrics, samples)


# ----------------------------------------------------------------------------- --log tensorboard / wandb
# Optional: neither package is a dependency. Each is imported only when --log names it, and
# metrics.jsonl stays the record (--plot and --resume read it, never these).
LOGGERS = ("tensorboard", "wandb")
LOGGER_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}  # torch's needs tensorboard
LOGGER_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def logger_installed(name):
    """True if --log `name` can import what it needs."""
    try:
        importlib.import_module(LOGGER_MODULES[name])
    except ImportError:
        return False
    return True


def step_scalars(metrics):
    """The numbers of a metrics.jsonl line, without the step itself and the unmeasured (None) ones."""
    scalars = {}
    for key, value in metrics.items():
        if key != "step" and isinstance(value, (int, float)):
            scalars[key] = value
    return scalars


def sample_text(samples):
    """{"<type>/<role>": markdown} of a step's sample responses: the reward, then the response as a code
    block (indented, so its own markdown is shown as written)."""
    texts = {}
    for sample in samples:
        name = f"{sample['task_type']}/{sample['role']}"
        response = "\n".join("    " + line for line in sample["response"].splitlines())
        texts.setdefault(name, []).append(f"reward {sample['reward']:+.2f}\n\n{response}")
    return {name: "\n\n---\n\n".join(parts) for name, parts in texts.items()}


class TensorBoardLog:
    """Scalars under their metrics.jsonl names, samples as text per group, in RUN/tensorboard."""

    def __init__(self, cfg):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=os.path.join(cfg.out, "tensorboard"))

    def log_step(self, metrics, samples):
        for key, value in step_scalars(metrics).items():
            self.writer.add_scalar(key, value, metrics["step"])
        for name, text in sample_text(samples).items():
            self.writer.add_text(f"samples/{name}", text, metrics["step"])
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbLog:
    """Scalars under their metrics.jsonl names and a table of the step's samples, in one W&B run per run
    directory: its id is kept in RUN/wandb-id, so --resume continues the same W&B run."""

    def __init__(self, cfg):
        import wandb
        self.wandb = wandb
        id_path = os.path.join(cfg.out, "wandb-id")
        if not os.path.isfile(id_path):
            with open(id_path, "w") as f:
                f.write(secrets.token_hex(4))
        with open(id_path) as f:
            run_id = f.read().strip()
        self.run = wandb.init(project="azr", name=os.path.basename(os.path.abspath(cfg.out)), id=run_id,
                              resume="allow", dir=cfg.out, config=dataclasses.asdict(cfg))

    def log_step(self, metrics, samples):
        values = step_scalars(metrics)
        rows = [[s["task_type"], s["role"], s["reward"], s["response"]] for s in samples]
        values["samples"] = self.wandb.Table(columns=["task_type", "role", "reward", "response"], data=rows)
        self.run.log(values, step=metrics["step"])

    def close(self):
        self.run.finish()


def open_external_log(cfg):
    """--log's logger (rank 0 only), or None without --log."""
    if cfg.log == "tensorboard":
        return TensorBoardLog(cfg)
    if cfg.log == "wandb":
        return WandbLog(cfg)
    return None


def read_json_lines(path):
    """The records of a JSONL log; a line torn by a kill is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def drop_logs_after(run_dir, step):
    """A resumed run repeats the steps after its checkpoint: drop their old metrics and samples lines."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        rows = read_json_lines(path)
        with open(path, "w") as f:
            for row in rows:
                if row["step"] <= step:
                    f.write(json.dumps(row) + "\n")


def step_summary(metrics, steps):
    """One line: per task type the proposer (P) and solver (S) rewards, validity and accuracy; then
    buffer sizes, speed and the time split."""
    def fmt(key, sign=""):
        if metrics.get(key) is None:
            return "  - "
        return f"{metrics[key]:{sign}.2f}"

    parts = [f"step {metrics['step']}/{steps}"]
    for t in TASKS:
        # the format rates make a collapse visible at once: a group that is all malformed has zero
        # reward variance, so TRR++ gives it no gradient to recover with
        parts.append(f"{t[:3]} P {fmt(f'{t}/propose/reward', '+')} fmt {fmt(f'{t}/propose/format_rate')} "
                     f"valid {fmt(f'{t}/propose/validity_rate')} S {fmt(f'{t}/solve/reward', '+')} "
                     f"fmt {fmt(f'{t}/solve/format_rate')} acc {fmt(f'{t}/solve/solve_rate')}")
    buffer_sizes = "/".join(str(metrics[f"buffer/{t}"]) for t in TASKS)
    parts.append("buf " + buffer_sizes)
    parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
    parts.append(f"sample {metrics['time/sampling']:.0f}s exec {metrics['time/execution']:.0f}s "
                 f"update {metrics['time/update']:.0f}s")
    return " | ".join(parts)


# ----------------------------------------------------------------------------- checkpoints
def gathered_parameters(model):
    """Yields (name, full tensor) of every parameter, gathering FSDP shards one parameter at a time, so
    one gathered parameter exists at a time (every rank must run the loop to its end). Tied weights
    appear once."""
    for name, param in model.named_parameters():
        value = param.detach()
        if isinstance(value, DTensor):
            value = value.full_tensor()
        yield name, value


def full_model(model, rank):
    """Rank 0: a plain fp32 CPU Transformer with the gathered weights of a sharded one; other ranks
    join every gather and keep nothing (None): one host copy of the model per node, not one per GPU."""
    state = {}
    for name, value in gathered_parameters(model):
        if rank == 0:
            state[name] = value.float().cpu()
        del value  # the gathered parameter on the GPU goes before the next is gathered
    if rank != 0:
        return None
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    with torch.device("meta"):
        copy = Transformer(model.config)
    copy.load_state_dict(state, assign=True)
    copy.tie_weights()  # assign=True replaced both parameters; share one again
    return copy


def zero_shard_state(model, optimizer):
    """This rank's shard of a ZeroRedundancyOptimizer's AdamW state, {parameter name: its state}, the
    form torch.distributed.checkpoint saves and loads: each rank writes and reads only its own
    parameters' entries, so no rank ever holds another's (ZeRO's own consolidate_state_dict would
    broadcast every shard through every GPU) and a run resumes on any number of ranks."""
    names = {param: name for name, param in model.named_parameters()}
    state = {}
    for group in optimizer.optim.param_groups:
        for param in group["params"]:
            state[names[param]] = optimizer.optim.state[param]
    return state


def load_zero_shard_state(model, optimizer, path):
    """Read the AdamW state of this rank's parameters (all of them for a plain AdamW, the local
    partition for a ZeroRedundancyOptimizer) from a checkpoint written with zero_shard_state, onto the
    CPU first (then AdamW moves it beside each parameter): only the local shard reaches the GPU. The
    ranks ask for different entries; these are plain tensors, whose loading needs no collective per
    entry."""
    names = {param: name for name, param in model.named_parameters()}
    local = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    state = {}
    for group in local.param_groups:
        for param in group["params"]:
            state[names[param]] = {"step": torch.zeros(()), "exp_avg": torch.zeros(param.shape),
                                   "exp_avg_sq": torch.zeros(param.shape)}
    dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    local_state_dict = local.state_dict()  # the local optimizer's param groups, parameters by index
    index = 0
    for group in local.param_groups:
        for param in group["params"]:
            local_state_dict["state"][index] = state[names[param]]
            index += 1
    local.load_state_dict(local_state_dict)


def save_checkpoint(run_dir, model, logprob_module, tokenizer, prompt_format, optimizer, step, rank):
    """An HF checkpoint directory (eval.py --model and transformers read it) plus optimizer state, RNG
    states and step, swapped in atomically. Under --fsdp and --zero every rank writes its shard of the
    AdamW state (optimizer/, torch.distributed.checkpoint); under FSDP the weights are gathered one
    parameter at a time for rank 0 to write."""
    tmp = os.path.join(run_dir, "checkpoint.tmp")
    final = os.path.join(run_dir, "checkpoint")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    weights = model
    sharded = isinstance(logprob_module, FSDPModule) or isinstance(optimizer, ZeroRedundancyOptimizer)
    if sharded:
        dist.barrier()  # tmp exists before any rank writes into it
    if isinstance(logprob_module, FSDPModule):
        dcp.save(get_optimizer_state_dict(logprob_module, optimizer), checkpoint_id=os.path.join(tmp, "optimizer"))
        weights = full_model(model, rank)
    elif isinstance(optimizer, ZeroRedundancyOptimizer):
        dcp.save(zero_shard_state(model, optimizer), checkpoint_id=os.path.join(tmp, "optimizer"))
    if rank != 0:
        return
    save_hf_checkpoint(weights, tokenizer, tmp, prompt_format=prompt_format)
    if not sharded:
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    torch.save({"step": step, "python": random.getstate(), "torch": torch.get_rng_state()},
               os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def load_checkpoint(run_dir, model, logprob_module, optimizer):
    """Restore the optimizer state, RNG states and step of the latest checkpoint (its weights are the
    model train() loaded); returns the step to continue from (0 without one). Optimizer state is read
    to the CPU and only this rank's part of it moves to the GPU: FSDP's dcp.load fills the local
    shards in place, a --zero checkpoint gives each rank its own parameters' entries (on any number
    of ranks, one without --zero too), and a full optimizer.pt is loaded on the CPU (a --zero run
    keeps its partition of it)."""
    path = os.path.join(run_dir, "checkpoint")
    if not os.path.isdir(path):
        return 0
    if isinstance(logprob_module, FSDPModule):
        state = get_optimizer_state_dict(logprob_module, optimizer)
        dcp.load(state, checkpoint_id=os.path.join(path, "optimizer"))
        set_optimizer_state_dict(logprob_module, optimizer, state)
    elif os.path.isdir(os.path.join(path, "optimizer")):  # written under --zero
        load_zero_shard_state(model, optimizer, os.path.join(path, "optimizer"))
    else:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu"))
    state = torch.load(os.path.join(path, "state.pt"), weights_only=False)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    return state["step"]


# ----------------------------------------------------------------------------- plotting
def plot_run(run_dir):
    """metrics.jsonl -> metrics.png: per group, rewards, format rates, validity and solve rates."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("azr: plotting needs matplotlib: pip install matplotlib")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        sys.exit(f"azr: no metrics.jsonl in {run_dir}")
    rows = read_json_lines(path)
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    panels = [("reward", "mean reward"), ("format_rate", "well-formed responses"),
              ("validity_rate", "proposal validity"), ("solve_rate", "solve rate")]
    for ax, (suffix, title) in zip(axes, panels):
        keys = set()
        for row in rows:
            for key in row:
                if key.endswith("/" + suffix):
                    keys.add(key)
        for key in sorted(keys):
            steps = [row["step"] for row in rows if row.get(key) is not None]
            values = [row[key] for row in rows if row.get(key) is not None]
            if steps:
                ax.plot(steps, values, label=key.rsplit("/", 1)[0], marker=".")
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "metrics.png"), dpi=120)
    print(f"wrote {os.path.join(run_dir, 'metrics.png')}")
