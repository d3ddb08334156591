"""Absolute Zero self-play: the config and the training loop, in the order a step runs.

One model plays two roles against a Python executor (docs/algorithm.md describes the algorithm, with
every constant and where it lives). Before the first step the buffers are seeded with valid proposals
of the base model (phases 1-2 without training). Then each step, for all three task types
(deduction, abduction, induction) together:

  1. propose: batch_size proposer prompts per type, each showing references drawn from the buffers
     (K triplets of that type's buffer; for induction one program of the triplet buffers' union);
  2. validate: parse the proposals and check them in the executor (tasks.score_proposals);
  3. learnability: n_solve_samples solver rollouts per valid proposal give its solve rate s and the
     proposer's reward 1 - s when 0 < s < 1 (eq. 4, composite reward eq. 6); not trained on;
  4. add to buffers: every rank's valid proposals, in rank order;
  5. solver tasks: batch_size per type, this step's new tasks first, topped up from the buffer;
  6. solve: one response per task, rewarded 1 if correct, else a penalty (eq. 6);
  7. TRR++: advantages normalised within each of the six (type, role) groups over all ranks (eq. 8);
  8. update: the 6 x batch_size rollouts cut into mini_batches slices, one AdamW step each on PPO's
     clipped surrogate against pi_old (the authors' update: three steps, clip 0.2).

The file reads top to bottom: config and CLI, distributed helpers, sampling, the self-play phases
1-6, the update (phases 7-8), the loop. Each phase returns its values, and collect_rollouts builds each
trained Rollout once from them. What differs between the task types is data (tasks.TASKS), which the
phases index. rundir.py owns what a run writes to disk.

Run:  python azr.py                                  (CPU preset + embedded Qwen2.5-Coder-0.5B when no GPU)
      torchrun --nproc_per_node=8 azr.py --model DIR (the paper's settings on a GPU node)
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from tqdm import tqdm

import buffers
import rundir
from executor import BANNED_MODULES, Executor, flatten, run_batch_with_progress, run_grouped
from model import (CPU_DEFAULT_MODEL, EMBEDDED_MODELS, KVCache, Transformer, cpu_has_bf16, default_stop_ids, generate,
                   int8_decoder, int8_decoding_available, load_model, recorded_prompt_format, refresh_int8_decoder,
                   sample_texts, shared_prefix_groups)
from tasks import (ROLES, TASKS, Rewards, proposer_reward, reference_pool, score_proposals, score_solutions,
                   solver_reward)
from trr import policy_loss, trr_advantages


# ----------------------------------------------------------------------------- config
def option(default, help_text):
    """A Config field with the one-line help text that `python azr.py --help` shows."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class Config:
    """Every setting of a run; each field is a CLI flag (--batch-size for batch_size). The defaults are
    the paper's GPU settings; CPU_PRESET below replaces some of them on a machine without CUDA."""
    # run
    model: str = option(CPU_DEFAULT_MODEL, "HF checkpoint directory (Qwen2/2.5, Qwen3, Llama 3) or an embedded "
                                           "model's name")
    prompt_format: str = option("auto", "chat, plain or auto: chat for the embedded models and for checkpoints that "
                                        "record it, plain otherwise")
    device: str = option("auto", "auto, cpu or cuda")
    preset: str = option("auto", "gpu (the defaults shown), cpu, or auto: cpu when CUDA is absent or --device cpu")
    out: str = option("", "run directory (default: runs/<timestamp>)")
    resume: str = option("", "continue the run in this directory; flags given with it override its config.json")
    seed_from: str = option("", "start from the seed buffers of this earlier run instead of seeding")
    plot: str = option("", "only plot this run directory's metrics to metrics.png, then exit")
    seed: int = option(0, "run seed: references, solver tasks and sampling are reproducible from it")
    steps: int = option(500, "training steps")
    checkpoint_every: int = option(50, "write a checkpoint every this many steps, and after the last")
    samples_per_step: int = option(2, "decoded proposals and solutions per group written to samples.jsonl per step")
    log: str = option("", "also send each step's metrics and samples to tensorboard or wandb (metrics.jsonl is "
                          "always written)")
    # self-play
    batch_size: int = option(64, "rollouts per (task type, role) per step, across all ranks")
    num_references: int = option(6, "K: reference triplets shown to a deduction or abduction proposer")
    n_solve_samples: int = option(8, "solver rollouts per valid proposal that measure its learnability (eq. 4)")
    seed_size: int = option(256, "tasks per buffer after seeding")
    seed_max_rounds: int = option(20, "seeding rounds at most, for the triplets and again for induction")
    max_prompt_tokens: int = option(6144, "a longer prompt is re-drawn or dropped, never truncated")
    max_response_tokens: int = option(8096, "tokens sampled per response at most")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling: keep the likeliest tokens up to this probability mass (1: off)")
    format_penalty: float = option(-1.0, "reward of a malformed response or unparseable payload, both roles (eq. 6)")
    wrong_penalty: float = option(-0.5, "solver: reward of a well-formed wrong answer (eq. 6)")
    invalid_penalty: float = option(-1.0, "proposer: reward of a well-formed task that fails validation")
    unlearnable_penalty: float = option(-0.5, "proposer: reward of a valid task that all or none of the rollouts solve")
    # executor
    exec_timeout_s: float = option(5.0, "wall-clock limit per sandboxed program run, in seconds")
    exec_workers: int = option(0, "sandbox worker processes per rank (0: the node's cores shared among its ranks)")
    exec_memory_mb: int = option(1024, "memory limit per sandboxed program, in MiB")
    max_output_chars: int = option(1000, "a proposal whose output repr is longer is invalid")
    # optimisation
    lr: float = option(1e-6, "AdamW learning rate")
    lr_warmup_steps: int = option(0, "linear warm-up from lr / lr_warmup_steps over this many steps (0: constant lr)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    weight_decay: float = option(0.01, "AdamW weight decay (verl's default, which the authors ran)")
    grad_clip: float = option(1.0, "clip the gradient norm of each mini-batch to this")
    mini_batches: int = option(3, "AdamW steps per training step, one per slice of the step's rollouts (the authors: "
                                  "384 sequences in mini-batches of 128); 1: plain REINFORCE, one step")
    clip_ratio: float = option(0.2, "PPO clip range eps: a token's ratio pi/pi_old counts within [1 - eps, 1 + eps]")
    entropy_coef: float = option(0.001, "weight of the entropy bonus in the loss (the authors' paper branch)")
    micro_batch_size: int = option(4, "sequences per forward and backward in the update")
    generation_batch_size: int = option(128, "sequences decoded together at most (the KV cache's rows)")
    activation_checkpointing: bool = option(True, "recompute each block's activations in the backward to save memory")
    compute_dtype: str = option("auto", "the sampler copy's and the update's compute dtype: bfloat16, float32, or "
                                        "auto: bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32")
    int8_decode: bool = option(True, "CPU: decode from an int8 copy of the weights (prefill and update stay in the "
                                     "compute dtype); off where torch has no fbgemm")
    zero: bool = option(False, "shard AdamW's state across ranks (ZeroRedundancyOptimizer)")
    fsdp: bool = option(False, "FSDP2 under torchrun: shard weights, gradients and AdamW state across ranks")
    kv_cache_gib: float = option(0.0, "sampler KV cache per GPU in GiB (0: half of what is free once the sampler "
                                      "copy exists, less what the update will still allocate; unused on CPU)")


# Sized so `python azr.py` trains Qwen2.5-Coder-0.5B-Instruct on a 2-core CPU for about an hour (README
# "Learning on a CPU"). The learning rate is 5x the paper's because the run is ~100x shorter: three AdamW
# steps of 5e-6 move each weight about 1.5e-5 per training step, near the 1e-5 single step that learned
# the format without collapsing it (a constant 5e-5 collapsed it in one step); the warm-up keeps Adam's
# first steps small. No entropy bonus: it would make the zero-advantage rollouts run in the update,
# which is most of a CPU step. Two sequences per micro-batch let a task type's proposer prompts share
# their instructions in the update (micro_batches); the run peaks near 17 GB of a 24 GB machine.
CPU_PRESET = dict(steps=6, checkpoint_every=2, batch_size=4, num_references=2, n_solve_samples=4,
                  seed_size=4, seed_max_rounds=2, max_prompt_tokens=1536, max_response_tokens=256,
                  exec_timeout_s=2.0, lr=5e-6, lr_warmup_steps=2, mini_batches=3, entropy_coef=0.0,
                  micro_batch_size=2, generation_batch_size=48, activation_checkpointing=False)


def flag_help(config_field):
    """The field's help text with its default (and its CPU-preset value, where that differs)."""
    text = config_field.metadata["help"]
    if config_field.default == "":
        return text
    text += f" (default: {config_field.default}"
    if config_field.name in CPU_PRESET:
        text += f"; cpu preset: {CPU_PRESET[config_field.name]}"
    return text + ")"


def parse_config(argv=None):
    """Defaults <- preset <- the resumed run's config.json <- explicit CLI flags."""
    parser = argparse.ArgumentParser(description="Absolute Zero self-play training.")
    for config_field in dataclasses.fields(Config):
        flag = "--" + config_field.name.replace("_", "-")
        if config_field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=flag_help(config_field))
        else:
            parser.add_argument(flag, type=config_field.type, default=None, metavar=config_field.name.upper(),
                                help=flag_help(config_field))
    explicit = {}
    for name, value in vars(parser.parse_args(argv)).items():
        if value is not None:
            explicit[name] = value
    values = {}
    if explicit.get("resume"):
        saved = os.path.join(explicit["resume"], "config.json")
        if not os.path.isfile(saved):
            parser.error(f"--resume {explicit['resume']}: no config.json there, not a run directory")
        with open(saved) as f:
            values = json.load(f)
        values["out"] = explicit["resume"]
    else:
        preset = explicit.get("preset", "auto")
        if preset not in ("auto", "gpu", "cpu"):
            parser.error(f"--preset must be auto, gpu or cpu, not {preset!r}")
        device = explicit.get("device", "auto")
        no_gpu = device == "cpu" or not torch.cuda.is_available()
        if preset == "cpu" or (preset == "auto" and no_gpu):
            values.update(CPU_PRESET)
    values.update(explicit)
    known = {name: value for name, value in values.items() if name in Config.__dataclass_fields__}
    return Config(**known)


def _is_run_dir_with_seeds(path):
    return all(os.path.isfile(os.path.join(path, "seeds", f"{task_type}.jsonl")) for task_type in TASKS)


# What each flag accepts, as (the allowed range in words, a test of the value). check_config applies it to
# every Config field before any work, and tests/test_azr.py fails for a field that has no entry here.
ALLOWED = {
    "model": (f"an HF checkpoint directory (with config.json) or an embedded model ({', '.join(EMBEDDED_MODELS)})",
              lambda v: v in EMBEDDED_MODELS or os.path.isfile(os.path.join(v, "config.json"))),
    "prompt_format": ("auto, chat or plain", lambda v: v in ("auto",) + buffers.PROMPT_FORMATS),
    "device": ("auto, cpu or cuda", lambda v: v in ("auto", "cpu", "cuda")),
    "preset": ("auto, gpu or cpu", lambda v: v in ("auto", "gpu", "cpu")),
    "out": ("a directory path, not a file", lambda v: not os.path.isfile(v)),
    "resume": ("a run directory (with config.json)",
               lambda v: v == "" or os.path.isfile(os.path.join(v, "config.json"))),
    "seed_from": ("a run directory with " + ", ".join(f"seeds/{task_type}.jsonl" for task_type in TASKS),
                  lambda v: v == "" or _is_run_dir_with_seeds(v)),
    "plot": ("a run directory with metrics.jsonl",
             lambda v: v == "" or os.path.isfile(os.path.join(v, "metrics.jsonl"))),
    "log": ("tensorboard or wandb (or empty: metrics.jsonl only)", lambda v: v in ("",) + rundir.LOGGERS),
    "seed": ("an integer", lambda v: True),
    "steps": (">= 1", lambda v: v >= 1),
    "checkpoint_every": (">= 1", lambda v: v >= 1),
    "samples_per_step": (">= 0", lambda v: v >= 0),
    "batch_size": (">= 1", lambda v: v >= 1),
    "num_references": (">= 1", lambda v: v >= 1),
    "n_solve_samples": (">= 1", lambda v: v >= 1),
    "seed_size": (">= 1", lambda v: v >= 1),
    "seed_max_rounds": (">= 1", lambda v: v >= 1),
    "max_prompt_tokens": (">= 1", lambda v: v >= 1),
    "max_response_tokens": (">= 1", lambda v: v >= 1),
    "temperature": (">= 0 (0: greedy)", lambda v: v >= 0),
    "top_p": ("in (0, 1]", lambda v: 0 < v <= 1),
    "format_penalty": ("<= 0", lambda v: v <= 0),
    "wrong_penalty": ("<= 0", lambda v: v <= 0),
    "invalid_penalty": ("<= 0", lambda v: v <= 0),
    "unlearnable_penalty": ("<= 0", lambda v: v <= 0),
    "exec_timeout_s": ("> 0", lambda v: v > 0),
    "exec_workers": (">= 0 (0: the node's cores shared among its ranks)", lambda v: v >= 0),
    "exec_memory_mb": (">= 128", lambda v: v >= 128),
    "max_output_chars": (">= 1", lambda v: v >= 1),
    "lr": ("> 0", lambda v: v > 0),
    "lr_warmup_steps": (">= 0", lambda v: v >= 0),
    "beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "grad_clip": ("> 0", lambda v: v > 0),
    "micro_batch_size": (">= 1", lambda v: v >= 1),
    "mini_batches": (">= 1", lambda v: v >= 1),
    "clip_ratio": ("> 0", lambda v: v > 0),
    "entropy_coef": (">= 0", lambda v: v >= 0),
    "compute_dtype": ("auto, bfloat16 or float32", lambda v: v in ("auto", "bfloat16", "float32")),
    "generation_batch_size": (">= 1", lambda v: v >= 1),
    "activation_checkpointing": ("true or false", lambda v: True),
    "int8_decode": ("true or false", lambda v: True),
    "zero": ("true or false", lambda v: True),
    "fsdp": ("true or false", lambda v: True),
    "kv_cache_gib": (">= 0 (0: from the memory free once the update's state exists)", lambda v: v >= 0),
}
TYPE_WORDS = {str: "a string", int: "an integer", float: "a finite number", bool: "true or false"}


def has_type(value, wanted):
    """True if `value` (from the command line, or a resumed run's config.json) is of the field's type; an int
    is a number, a bool is not."""
    if wanted is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if wanted is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, wanted)


def check_config(cfg):
    """A one-line error naming the flag and what it accepts, before any work is done; None when all is well.
    Every field is checked against its type and ALLOWED, then the combinations and the machine."""
    for config_field in dataclasses.fields(Config):
        flag = "--" + config_field.name.replace("_", "-")
        value = getattr(cfg, config_field.name)
        if not has_type(value, config_field.type):
            return f"azr: {flag} must be {TYPE_WORDS[config_field.type]}, not {value!r}"
        allowed, test = ALLOWED[config_field.name]
        if not test(value):
            return f"azr: {flag} must be {allowed}, not {value!r}"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return "azr: --device cuda but CUDA is not available"
    if cfg.fsdp and cfg.zero:
        return "azr: --fsdp already shards the optimizer state; drop --zero"
    if cfg.fsdp and "MASTER_ADDR" not in os.environ:
        return "azr: --fsdp runs under torchrun, e.g. torchrun --nproc_per_node=8 azr.py --fsdp"
    if cfg.log and not rundir.logger_installed(cfg.log):
        return f"azr: --log {cfg.log} needs its package: {rundir.LOGGER_INSTALL[cfg.log]}"
    return None


# ----------------------------------------------------------------------------- distributed
# How long a rank waits in a collective before the run is aborted (nccl's default is 10 minutes, gloo's
# 30). Ranks legitimately wait for each other much longer than that: the rank with the most valid
# proposals runs the learnability rollouts (up to 8096-token tails) while the others wait at the next
# all-gather, the first decode of each shape captures a CUDA graph, and every rank waits while rank 0
# writes a checkpoint of tens of GB. A rank that really hangs is then reported after two hours.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def setup_distributed(cfg):
    """-> rank, world size, device. torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; nccl on CUDA, gloo on CPU."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if (world > 1 or cfg.fsdp) and not dist.is_initialized():  # FSDP needs a process group even alone
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if not dist.is_initialized():
        return 0, 1, device
    return dist.get_rank(), dist.get_world_size(), device


def all_gather(obj):
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_lists(items):
    """Every rank's list `items` joined into one: rank 0's items, then rank 1's, ..."""
    return flatten(all_gather(items))


# ----------------------------------------------------------------------------- stopping on a signal
class StopRequest:
    """SIGTERM (what SLURM and Kubernetes send a preempted job before they kill it) or SIGINT (Ctrl-C).
    The first asks the run to stop at its next safe point: train() then writes a checkpoint, prints how to
    resume and exits. A second exits at once, as SIGKILL would: the buffers are on disk entry by entry,
    so that loses only the steps since the last checkpoint."""

    def __init__(self):
        self.signal = None  # the first signal's number, once one came
        self.stopped = False  # train() stopped before its last step

    def handle(self, signum, frame):
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        # os.write, not print: the signal may have interrupted a print, which must not be re-entered
        os.write(2, f"\nazr: {signal.Signals(signum).name}: stopping at the next safe point; "
                    "send it again to exit now\n".encode())


STOP = StopRequest()  # one per process, as signal handlers are


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT set STOP instead of ending the process, for as long as the run lasts."""
    STOP.signal = None
    STOP.stopped = False
    previous = {signum: signal.signal(signum, STOP.handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_requested():
    """A safe point: True on every rank if any rank got a signal (a collective, so all ranks call it at the
    same points and agree; the signal may reach them at different moments, or one rank only)."""
    return any(all_gather(STOP.signal is not None))


def resume_command(out):
    """How to continue this run, as the user would type it."""
    if dist.is_initialized():
        return f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)} azr.py --resume {out}"
    return f"python azr.py --resume {out}"


# ----------------------------------------------------------------------------- sampling
def resolve_prompt_format(prompt_format, model_name, tokenizer):
    """auto -> chat for the embedded instruct models and for checkpoints that record chat (ours), plain
    otherwise: base checkpoints ship chat templates too, so a template alone must not switch the
    paper's base-model runs to chat."""
    if prompt_format == "auto":
        prompt_format = recorded_prompt_format(model_name) or "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        sys.exit(f"azr: --prompt-format chat, but the tokenizer of {model_name} has no chat template")
    return prompt_format


def compute_dtype(cfg, device):
    """--compute-dtype resolved: auto is bf16 on CUDA and on CPUs with native bf16 matmuls (elsewhere a
    CPU emulates bf16 far slower than it runs fp32), else fp32."""
    if cfg.compute_dtype == "bfloat16":
        return torch.bfloat16
    if cfg.compute_dtype == "float32":
        return torch.float32
    if device.type == "cuda" or cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def sampler_model(model, device, dtype=None):
    """The sampler's permanent copy of the weights in `dtype` (default: bf16 on CUDA, fp32 elsewhere),
    so decoding never casts weights and its tensors keep fixed addresses (CUDA graphs replay against
    them). On CPU, where the copy would be in the trained weights' own dtype and they are not sharded,
    the sampler decodes the trained model itself: a copy would be the same numbers, 4 bytes a parameter
    more (2 GB for the default model) and a copy after every update."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        sharded = any(isinstance(param, DTensor) for param in model.parameters())
        if not sharded and all(param.dtype == dtype for param in model.parameters()):
            return model
    with torch.device("meta"):
        copy = Transformer(model.config)
    copy = copy.to(dtype).to_empty(device=device)
    copy.tie_weights()
    copy.requires_grad_(False)
    refresh_sampler_model(copy, model)
    return copy.eval()


@torch.no_grad()
def refresh_sampler_model(copy, model):
    """Copy the trained weights into the sampler's copy in place (FSDP: one parameter gathered at a
    time, cast to the copy's dtype before the gather, so bf16 travels). Nothing to copy where the
    sampler decodes the trained model itself."""
    if copy is model:
        return
    targets = dict(copy.named_parameters())
    for name, param in model.named_parameters():
        value = param.detach().to(targets[name].dtype)
        if isinstance(value, DTensor):
            value = value.full_tensor()
        targets[name].copy_(value)


def sampler_decoder(copy, cfg, device):
    """The model the sampler decodes with: on CPU with --int8-decode an int8 copy of the sampler's
    weights (model.int8_decoder), else None (the sampler copy decodes too)."""
    if device.type == "cuda" or not cfg.int8_decode or not int8_decoding_available():
        return None
    return int8_decoder(copy)


# Default share for the KV cache of the GPU memory that stays free once the update's own state exists;
# the rest is for the update's transients (autocast's bf16 weight copies or FSDP's gathered blocks,
# and the activations of a micro-batch).
KV_CACHE_FREE_FRACTION = 0.5


def pending_update_bytes(logprob_module, optimizer):
    """Bytes the update will allocate and keep that are not allocated yet, which the KV cache must leave
    free: AdamW's two moments of this rank's parameters (fp32, sharded by --zero and --fsdp) until the
    first step or a resume creates them, and the gradients, which FSDP and a single process allocate
    in the first backward (DDP's buckets, which hold them under DDP, exist once the model is wrapped)."""
    local = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer  # this rank's shard
    is_ddp = isinstance(logprob_module, torch.nn.parallel.DistributedDataParallel)
    pending = 0
    for group in local.param_groups:
        for param in group["params"]:
            shard = param.to_local() if isinstance(param, DTensor) else param
            size = shard.numel() * shard.element_size()
            if not local.state.get(param):
                pending += 2 * size  # exp_avg, exp_avg_sq
            if param.grad is None and not is_ddp:
                pending += size
    return pending


def kv_cache_budget(cfg, device, pending_bytes):
    """Bytes for the CUDA KV cache: --kv-cache-gib, else KV_CACHE_FREE_FRACTION of what is free now
    (the model, its sampler copy and the optimizer set up) less `pending_bytes` (pending_update_bytes)."""
    if cfg.kv_cache_gib > 0:
        return cfg.kv_cache_gib * 2 ** 30
    torch.cuda.empty_cache()  # blocks the allocator keeps from loading are free for the cache too
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return KV_CACHE_FREE_FRACTION * max(0, free_bytes - pending_bytes)


def sampler_cache(cfg, config, device, pending_bytes=0):
    """The run's KV cache, allocated once: rows of max_prompt_tokens + max_response_tokens slots. On
    CUDA the rows are what the budget holds (kv_cache_budget), at most generation_batch_size; on CPU
    generation_batch_size rows. The n_solve_samples rollouts of one prompt are decoded together, so
    the cache holds at least that many."""
    capacity = cfg.max_prompt_tokens + cfg.max_response_tokens
    if device.type != "cuda":
        rows = max(cfg.generation_batch_size, cfg.n_solve_samples)
        return KVCache(config, rows, capacity, compute_dtype(cfg, device), device)
    budget = kv_cache_budget(cfg, device, pending_bytes)
    row_bytes = capacity * KVCache.bytes_per_token(config, torch.bfloat16)
    rows = min(cfg.generation_batch_size, int(budget // row_bytes))
    if rows < cfg.n_solve_samples:
        sys.exit(f"azr: a KV cache of {budget / 2 ** 30:.1f} GiB holds {rows} rollouts of {capacity} tokens "
                 f"({row_bytes / 2 ** 30:.2f} GiB each), fewer than --n-solve-samples {cfg.n_solve_samples}; "
                 "raise --kv-cache-gib or lower the token limits")
    return KVCache(config, rows, capacity, torch.bfloat16, device, row_bucket=8, length_bucket=256, cuda_graphs=True)


@dataclass
class Response:
    """One sampled response: its token ids (ending with the stop token if one was sampled) and text."""
    tokens: list
    text: str


class Sampler:
    """Turns task texts into prompt tokens (in the run's prompt format), decodes in batches that fill
    the run's KV cache, with a progress bar, and counts tokens. `model` is the sampler's own copy of the
    weights (sampler_model); `decoder` what decodes, if not `model` (sampler_decoder)."""

    def __init__(self, model, tokenizer, cfg, device, cache, sample_fn=generate, decoder=None):
        self.model = model
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = device
        self.cache = cache
        self.sample_fn = sample_fn
        self.stop_ids = default_stop_ids(tokenizer)
        self.tokens = 0  # sampled this step, for tokens/s
        self.seconds = 0.0

    def refresh(self, model):
        """Copy the trained weights into the sampler's copy (and its int8 decoder) after an update."""
        refresh_sampler_model(self.model, model)
        if self.decoder is not None:
            refresh_int8_decoder(self.decoder, self.model)

    def encode(self, task_text):
        return buffers.encode_prompt(self.tokenizer, task_text, self.cfg.prompt_format)

    def fits(self, prompt_tokens):
        return len(prompt_tokens) <= self.cfg.max_prompt_tokens

    def __call__(self, prompts, n, seed, desc):
        """prompts: token-id lists -> for each prompt, a list of n Responses."""
        start = time.time()
        texts = sample_texts(self.model, self.tokenizer, prompts, self.cfg.max_response_tokens, n, seed,
                             batch_size=max(1, self.cache.rows // n), temperature=self.cfg.temperature,
                             top_p=self.cfg.top_p, stop_ids=self.stop_ids, cache=self.cache,
                             sample_fn=self.sample_fn, desc=desc, decoder=self.decoder)
        results = []
        for group in texts:
            responses = []
            for tokens, text in group:
                responses.append(Response(tokens, text))
                self.tokens += len(tokens)
            results.append(responses)
        self.seconds += time.time() - start
        return results


class TimedExecutor:
    """The executor behind a progress bar and a clock; tasks.py scores through its run_batch."""

    def __init__(self, executor, chunk):
        self.executor = executor
        self.chunk = chunk
        self.seconds = 0.0

    def run_batch(self, calls):
        start = time.time()
        results = run_batch_with_progress(self.executor, calls, self.chunk, desc="execute", leave=False)
        self.seconds += time.time() - start
        return results


def sampling_seed(cfg, step, rank, phase):
    """Different on every rank and phase, reproducible from (run seed, step)."""
    return random.Random(f"{cfg.seed}-{step}-{rank}-{phase}").getrandbits(48)


def sample_jobs(sampler, jobs_by_type, n, seed, desc):
    """{task_type: [jobs]} -> {task_type: [n Responses per job]}. The task types share one sampler call:
    decoding cost is mostly the weights' memory traffic per step, so one batch of 3B rows is far cheaper
    than three batches of B."""
    prompts = [[job.prompt_tokens for job in jobs] for jobs in jobs_by_type.values()]
    per_type = run_grouped(lambda flat: sampler(flat, n, seed, desc), prompts)
    return dict(zip(jobs_by_type, per_type))


def first_responses(sampler, jobs_by_type, seed, desc):
    """{task_type: [jobs]} -> {task_type: [one Response per job]}."""
    responses = {}
    for task_type, per_job in sample_jobs(sampler, jobs_by_type, 1, seed, desc).items():
        responses[task_type] = [samples[0] for samples in per_job]
    return responses


# ----------------------------------------------------------------------------- self-play: phases 1-6
@dataclass
class ProposerJob:
    """A proposer prompt and what it shows: its references, a list of tasks drawn from the buffers."""
    task_type: str
    references: list
    prompt_tokens: list


@dataclass
class SolverJob:
    """A solver prompt for one task (of its type's task class: a buffers.Triplet, buffers.InductionTask)."""
    task_type: str
    task: object
    prompt_tokens: list


@dataclass
class Rollout:
    """One trained sequence of a (type, role) group: prompt and response tokens, its reward and what the
    metrics need. collect_rollouts builds each one once, from what the phases return (the learnability
    rollouts are not trained on and are not Rollouts)."""
    task_type: str
    role: str
    prompt_tokens: list
    response_tokens: list
    response_text: str
    reward: float
    format_ok: bool = True
    valid: bool = True  # proposer: the proposal passed validation (a solver's task always did)
    # The share of solver answers to this rollout's task that were right: a proposer's s over its
    # learnability rollouts (None: not measured), a solver's over its one answer (1.0 or 0.0).
    solve_rate: float | None = None

    @property
    def group(self):
        """type_index * 2 + role_index, the TRR++ group (eq. 8): 0..5 for the three task types."""
        return list(TASKS).index(self.task_type) * len(ROLES) + ROLES.index(self.role)

    def summary(self):
        """What the metrics need, without the tokens (cheap to gather across ranks)."""
        return {"group": f"{self.task_type}/{self.role}", "reward": self.reward, "format_ok": self.format_ok,
                "valid": self.valid, "solve_rate": self.solve_rate, "length": len(self.response_tokens)}


PROMPT_TRIES = 4  # a prompt over max_prompt_tokens is re-drawn this many times at most, then dropped


def proposer_jobs(buffer_map, task_type, count, rng, sampler, num_references):
    """Phase 1's prompts: `count` ProposerJobs for one task type, identical on every rank (shared rng).

    Each shows references its type's record draws from its pool (tasks.reference_pool): deduction and
    abduction K triplets of their own buffer, induction one program of the union of the two triplet
    buffers. A prompt over max_prompt_tokens is re-drawn, never truncated, and dropped after
    PROMPT_TRIES draws.
    """
    kind = TASKS[task_type]
    pool = reference_pool(buffer_map, task_type)
    jobs = []
    for _ in range(count):
        for _attempt in range(PROMPT_TRIES):
            references = kind.draw_references(pool, num_references, rng)
            tokens = sampler.encode(kind.proposer_prompt(references))
            if sampler.fits(tokens):
                jobs.append(ProposerJob(task_type, references, tokens))
                break
    return jobs


def this_rank(jobs_by_type, rank, world):
    """This rank's share of every type's jobs, its slice [rank::world] (the jobs are the same on every rank)."""
    return {task_type: jobs[rank::world] for task_type, jobs in jobs_by_type.items()}


def propose(jobs_by_type, sampler, seed):
    """Phase 1: sample one response per job -> {task_type: [Response]}, job for job."""
    return first_responses(sampler, jobs_by_type, seed, "propose")


def validate(jobs_by_type, responses, executor):
    """Phase 2: parse and validate every proposal in the executor -> {task_type: [tasks.Proposal]}, job
    for job."""
    proposals = {}
    for task_type, jobs in jobs_by_type.items():
        texts = [response.text for response in responses[task_type]]
        proposals[task_type] = score_proposals(executor, task_type, texts, [job.references for job in jobs])
    return proposals


def solver_job(task_type, task, sampler):
    """The SolverJob of one task, or None when its prompt is over max_prompt_tokens."""
    tokens = sampler.encode(TASKS[task_type].solver_prompt(task))
    if sampler.fits(tokens):
        return SolverJob(task_type, task, tokens)
    return None


def estimate_learnability(proposals, executor, sampler, cfg, seed):
    """Phase 3: the solve rate s of every valid proposal over n_solve_samples solver rollouts ->
    {task_type: [s per proposal]}. These rollouts are not trained on.

    s is None where it is not measured: an invalid proposal, or a valid task whose solver prompt is over
    max_prompt_tokens (tasks.proposer_reward scores that one as unlearnable).
    """
    jobs_by_type = {}
    measured = {}  # per task type, job for job: the index of the proposal the job measures
    for task_type, type_proposals in proposals.items():
        jobs_by_type[task_type] = []
        measured[task_type] = []
        for index, proposal in enumerate(type_proposals):
            job = solver_job(task_type, proposal.task, sampler) if proposal.valid else None
            if job is not None:
                jobs_by_type[task_type].append(job)
                measured[task_type].append(index)
    n = cfg.n_solve_samples
    responses = sample_jobs(sampler, jobs_by_type, n, seed, "learnability")
    solve_rates = {}
    for task_type, jobs in jobs_by_type.items():
        answers = []  # per job, its n (task, response text) pairs
        for job, samples in zip(jobs, responses[task_type]):
            answers.append([(job.task, response.text) for response in samples])
        # Scored from the answer block alone, as the authors score this estimate (require_think=False).
        solutions = run_grouped(lambda pairs: score_solutions(executor, task_type, [task for task, _ in pairs],
                                                              [text for _, text in pairs], require_think=False),
                                answers)
        solve_rates[task_type] = [None] * len(proposals[task_type])
        for index, job_solutions in zip(measured[task_type], solutions):
            solve_rates[task_type][index] = sum(solution.correct for solution in job_solutions) / n
    return solve_rates


def add_to_buffers(buffer_map, proposals):
    """Phase 4: every rank's valid proposals, in rank order, join their type's buffer, so all ranks'
    buffers stay identical. -> {task_type: [the step's new valid tasks]}."""
    new_tasks = {}
    for task_type, type_proposals in proposals.items():
        new_tasks[task_type] = gather_lists([proposal.task for proposal in type_proposals if proposal.valid])
        for task in new_tasks[task_type]:
            buffer_map[task_type].add(task)
    return new_tasks


def solver_jobs(buffer, new_tasks, task_type, count, rng, sampler):
    """Phase 5: `count` SolverJobs, this step's new valid tasks first, topped up uniformly from the
    buffer; a task whose prompt is over max_prompt_tokens is skipped. Identical on every rank."""
    jobs = []
    candidates = list(new_tasks)
    for _attempt in range(PROMPT_TRIES * count + len(new_tasks)):
        if len(jobs) == count:
            break
        if not candidates:
            candidates = buffer.sample(count - len(jobs), rng)
        job = solver_job(task_type, candidates.pop(0), sampler)
        if job is not None:
            jobs.append(job)
    return jobs


def solve(jobs_by_type, executor, sampler, seed):
    """Phase 6: one response per job, scored -> ({task_type: [Response]}, {task_type: [tasks.Solution]}),
    job for job."""
    responses = first_responses(sampler, jobs_by_type, seed, "solve")
    solutions = {}
    for task_type, jobs in jobs_by_type.items():
        texts = [response.text for response in responses[task_type]]
        solutions[task_type] = score_solutions(executor, task_type, [job.task for job in jobs], texts)
    return responses, solutions


def collect_rollouts(step, buffer_map, executor, sampler, cfg, rank, world):
    """Phases 1-6 of one step for every task type -> this rank's rollouts (proposers, then solvers) and
    the sample responses to log; None if a signal stopped the step before phase 4. Each Rollout is built
    here, once, from what the phases returned, with its reward (tasks.proposer_reward, tasks.solver_reward)."""
    rewards = Rewards(format_error=cfg.format_penalty, wrong=cfg.wrong_penalty, invalid=cfg.invalid_penalty,
                      unlearnable=cfg.unlearnable_penalty)
    rng = random.Random(f"{cfg.seed}-step-{step}")  # same on every rank: same references and tasks
    jobs = {}
    for task_type in TASKS:
        jobs[task_type] = proposer_jobs(buffer_map, task_type, cfg.batch_size, rng, sampler, cfg.num_references)
    jobs = this_rank(jobs, rank, world)
    responses = propose(jobs, sampler, sampling_seed(cfg, step, rank, "propose"))
    # Safe points: until phase 4 nothing of the step is in the buffers, so on a signal the step can be
    # given up here and --resume redoes it whole.
    if stop_requested():
        return None
    proposals = validate(jobs, responses, executor)
    solve_rates = estimate_learnability(proposals, executor, sampler, cfg, sampling_seed(cfg, step, rank, "learn"))
    if stop_requested():
        return None
    rollouts = []
    for task_type in TASKS:
        for job, response, proposal, solve_rate in zip(jobs[task_type], responses[task_type], proposals[task_type],
                                                       solve_rates[task_type]):
            rollouts.append(Rollout(task_type, "propose", job.prompt_tokens, response.tokens, response.text,
                                    reward=proposer_reward(proposal, solve_rate, rewards),
                                    format_ok=proposal.parsed.ok, valid=proposal.valid, solve_rate=solve_rate))

    new_tasks = add_to_buffers(buffer_map, proposals)
    jobs = {}
    for task_type in TASKS:
        jobs[task_type] = solver_jobs(buffer_map[task_type], new_tasks[task_type], task_type, cfg.batch_size, rng,
                                      sampler)
    jobs = this_rank(jobs, rank, world)
    responses, solutions = solve(jobs, executor, sampler, sampling_seed(cfg, step, rank, "solve"))
    for task_type in TASKS:
        for job, response, solution in zip(jobs[task_type], responses[task_type], solutions[task_type]):
            rollouts.append(Rollout(task_type, "solve", job.prompt_tokens, response.tokens, response.text,
                                    reward=solver_reward(solution, rewards), format_ok=solution.parsed.ok,
                                    valid=True, solve_rate=float(solution.correct)))
    return rollouts, sample_records(rollouts, step, cfg.samples_per_step)


def sample_records(rollouts, step, per_group):
    """The first `per_group` decoded responses of each group, for samples.jsonl."""
    records = []
    for task_type in TASKS:
        for role in ROLES:
            group = [r for r in rollouts if r.task_type == task_type and r.role == role]
            for rollout in group[:per_group]:
                records.append({"step": step + 1, "task_type": task_type, "role": role, "reward": rollout.reward,
                                "response": rollout.response_text})
    return records


def seed_buffers(buffer_map, executor, sampler, cfg, rank, world, log):
    """Before the first step, fill the buffers with valid proposals of the base model (phases 1-2, no
    learnability filter, no training), one seed phase (tasks.TaskType.seed_phase) after the other: first
    the triplet buffers (deduction and abduction proposals both feed both, so they start from the same
    seed set), then induction tasks for their programs.
    -> False if a signal stopped it after a round (see StopRequest), else True."""
    phases = {}  # seed phase -> its task types, in TASKS order
    for task_type, kind in TASKS.items():
        phases.setdefault(kind.seed_phase, []).append(task_type)
    for phase, task_types in phases.items():
        for round_index in range(cfg.seed_max_rounds):
            if all(len(buffer_map[t]) >= cfg.seed_size for t in task_types):
                break
            rng = random.Random(f"{cfg.seed}-seed-{phase}-{round_index}")
            jobs = {}
            for task_type in task_types:
                jobs[task_type] = proposer_jobs(buffer_map, task_type, cfg.batch_size, rng, sampler,
                                                cfg.num_references)
            jobs = this_rank(jobs, rank, world)
            responses = propose(jobs, sampler, sampling_seed(cfg, -1 - round_index, rank, phase))
            proposals = validate(jobs, responses, executor)
            mine = []
            for type_proposals in proposals.values():
                for proposal in type_proposals:
                    if proposal.valid:
                        mine.append(proposal.task)
            for task in gather_lists(mine):
                for task_type in task_types:
                    if len(buffer_map[task_type]) < cfg.seed_size:
                        buffer_map[task_type].add(task)
            sizes = ", ".join(f"{len(buffer_map[t])} {t}" for t in task_types)
            log(f"seed round {round_index + 1}: {sizes}")
            if stop_requested():  # --resume seeds on from these buffers
                return False
    return True


# ----------------------------------------------------------------------------- the update: phases 7-8
class TokenLogprobs(torch.nn.Module):
    """DDP and FSDP wrap a module's forward; ours is the chunked per-token log-prob of model.py."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, mask=None, with_entropy=False, prefix=None):
        return self.model.token_logprobs(tokens, mask, with_entropy=with_entropy, prefix=prefix)


def shard_model(logprob_module, device, world):
    """FSDP2 over the ranks: each decoder block is a unit, gathered for its forward and again for its
    backward; the root unit holds the embedding, final norm and lm_head and keeps them gathered from
    forward through backward, so the chunked log-probs (model.token_logprobs) reuse them for every
    chunk. Master weights, gradients and AdamW state stay fp32 and sharded; CUDA computes in bf16 and
    reduces gradients in fp32."""
    mesh = init_device_mesh(device.type, (world,))
    if device.type == "cuda":
        precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        precision = MixedPrecisionPolicy()
    for block in logprob_module.model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=precision)
    fully_shard(logprob_module, mesh=mesh, mp_policy=precision, reshard_after_forward=False)
    return logprob_module


def wrap_for_training(model, cfg, device, world):
    """The module the update runs forward and backward through: FSDP2 with --fsdp, DDP on several
    ranks, else the model's log-probs as they are."""
    logprob_module = TokenLogprobs(model)
    if cfg.fsdp:
        return shard_model(logprob_module, device, world)
    if world == 1:
        return logprob_module
    # gradient_as_bucket_view: gradients live in DDP's buckets instead of beside them (4 bytes/param).
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(logprob_module, device_ids=device_ids,
                                                     gradient_as_bucket_view=True)


def make_optimizer(model, cfg, world):
    """AdamW; with --zero on several ranks each rank keeps only its shard of the moments."""
    adamw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.zero and world > 1:
        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, **adamw)
    return torch.optim.AdamW(model.parameters(), **adamw)


def learning_rate(cfg, step):
    """Linear warm-up over the first lr_warmup_steps steps, then constant (the paper's schedule)."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    return cfg.lr


def step_advantages(rollouts, rank):
    """Phase 7: TRR++ (eq. 8) over the step's rollouts from every rank -> this rank's advantages, one
    per rollout."""
    records_per_rank = all_gather([(rollout.reward, rollout.group) for rollout in rollouts])

    def advantages(records):  # of every rank's rollouts, in rank order
        return trr_advantages([reward for reward, _ in records], [group for _, group in records])
    return run_grouped(advantages, records_per_rank)[rank]


def mini_batch_slices(count, mini_batches):
    """0..count-1 cut into `mini_batches` contiguous slices of near-equal size, in order: verl splits
    the step's batch in its concatenated order, without shuffling."""
    slices = []
    for index in range(mini_batches):
        slices.append(list(range(count * index // mini_batches, count * (index + 1) // mini_batches)))
    return slices


def sequence_length(rollout):
    return len(rollout.prompt_tokens) + len(rollout.response_tokens)


def micro_batch(rollouts, prefix, rows, device):
    """The rollouts `rows`, which share their first `prefix` prompt tokens (0: nothing shared) ->
    (tokens (B, T): each row's prompt+response tokens after the prefix, right-padded; mask (B, T-1): 1
    on the response targets; the prefix's tokens (prefix,), or None for 0). Target t of a row is its
    token t+1, so a row's response targets start at its last prompt token, which the prefix never
    covers (model.shared_prefix_groups leaves every prompt one token of its own)."""
    length = max(sequence_length(rollouts[i]) for i in rows) - prefix
    tokens = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length - 1)
    for row, i in enumerate(rows):
        r = rollouts[i]
        own = (r.prompt_tokens + r.response_tokens)[prefix:]
        tokens[row, :len(own)] = torch.tensor(own)
        # the response is own tokens len(prompt) - prefix ..., so its targets start one before
        mask[row, len(r.prompt_tokens) - prefix - 1:len(own) - 1] = 1
    if prefix == 0:
        return tokens.to(device), mask.to(device), None
    return tokens.to(device), mask.to(device), torch.tensor(rollouts[rows[0]].prompt_tokens[:prefix], device=device)


def micro_batch_tokens(rollouts, prefix, rows):
    """The tokens micro_batch's tensors hold: the prefix once, every row's own tokens, padded."""
    return prefix + len(rows) * max(sequence_length(rollouts[i]) - prefix for i in rows)


def micro_batches(rollouts, indices, cfg, logprob_module):
    """The micro-batches of one mini-batch, at least one (possibly empty): (shared prefix length,
    [rollout indices]), the rollouts sharing their first `prefix length` prompt tokens, which the
    forward computes once for all of them (model.Transformer.token_logprobs; 0: nothing shared). The
    groups are the sampler's prefill groups (model.shared_prefix_groups over the prompts): one solver
    task's rollouts share their whole prompt but its last token, one task type's proposer prompts
    their instructions and worked example.

    Groups and micro-batches. The plain forward runs micro_batch_size rollouts at a time, so at most
    micro_batch_size times the mini-batch's longest sequence in tokens. A group's rollouts (shortest
    first) are cut into runs that stay within that many tokens (micro_batch_tokens: the prefix once,
    every row's own tokens, padded), one micro-batch each, each computing the prefix again. So rows
    that share a long prefix go together, more than micro_batch_size of them where they fit, and
    activation memory stays within the plain forward's (the rows also attend to copies of the
    prefix's keys and values: per layer 2 * kv_heads * head_dim numbers per prefix token and row, far
    less than a token's activations). One group per micro-batch: putting runs of several groups
    together would pad the shorter rows to the longer ones' length. A run of one rollout, and the
    rollouts in no group, share nothing and go micro_batch_size at a time, shortest first.

    FSDP gathers a block's weights for each call of it, and the shared forward calls every block twice
    (prefix, then rows), so under FSDP nothing is shared (the plain forward), and every rank runs as
    many micro-batches as the busiest one."""
    indices = list(indices)
    groups = [(0, list(range(len(indices))))]
    if indices and not isinstance(logprob_module, FSDPModule):
        groups = shared_prefix_groups([rollouts[i].prompt_tokens for i in indices])
    most_tokens = cfg.micro_batch_size * max((sequence_length(rollouts[i]) for i in indices), default=0)
    batches = []
    alone = []  # rollouts that share nothing
    for prefix, members in groups:
        members = sorted((indices[m] for m in members), key=lambda i: sequence_length(rollouts[i]))
        if prefix == 0:
            alone += members
            continue
        runs = [[]]
        for i in members:
            if runs[-1] and micro_batch_tokens(rollouts, prefix, runs[-1] + [i]) > most_tokens:
                runs.append([])
            runs[-1].append(i)
        for run in runs:
            if len(run) == 1:
                alone += run
            else:
                batches.append((prefix, run))
    alone.sort(key=lambda i: sequence_length(rollouts[i]))
    for start in range(0, len(alone), cfg.micro_batch_size):
        batches.append((0, alone[start:start + cfg.micro_batch_size]))
    if not batches:
        batches = [(0, [])]
    if isinstance(logprob_module, FSDPModule):
        most = max(all_gather(len(batches)))
        while len(batches) < most:
            batches.append((0, []))
    return batches


def update_autocast(cfg, device):
    """The update's forward runs under autocast in the compute dtype (bf16 on CUDA); master weights,
    gradients and AdamW state stay fp32."""
    dtype = compute_dtype(cfg, device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@torch.no_grad()
def old_logprobs(logprob_module, rollouts, batches, cfg, device):
    """log pi_old of every micro-batch in `batches` ((B, T-1) each, None for an empty one), computed by
    the training model in the update's precision before any optimizer step of the training step: the
    sampler's copy may run in another precision (int8 decoding, bf16), so its log-probs are not pi_old."""
    result = []
    for prefix_length, rows in batches:
        if not rows:
            result.append(None)
            continue
        tokens, mask, prefix = micro_batch(rollouts, prefix_length, rows, device)
        with update_autocast(cfg, device):
            result.append(logprob_module(tokens, mask, prefix=prefix).float())
    return result


def accumulate_gradients(logprob_module, rollouts, batches, advantages, old, num_tokens, world, cfg, device):
    """Backward of one mini-batch's loss (trr.policy_loss) over its micro-batches; the gradient ends
    as for one big batch. `old`: pi_old per micro-batch (old_logprobs), or None when the weights have
    not moved since the rollouts were taken (the first mini-batch): then pi_old is the forward's own
    value, detached, and the ratio is exactly 1. -> tokens whose ratio was clipped.

    DDP averages gradients over ranks, so each rank's loss is multiplied by the world size to turn
    that average into the sum over ranks that L (divided by the global token count) needs (FSDP's
    reduce-scatter averages too). Under DDP only the last micro-batch all-reduces; a rank without
    rollouts still joins it with a zero-weight pass.
    """
    is_ddp = isinstance(logprob_module, torch.nn.parallel.DistributedDataParallel)
    with_entropy = cfg.entropy_coef > 0
    clipped = 0
    for index, (prefix_length, rows) in enumerate(batches):
        if is_ddp and index < len(batches) - 1:
            sync = logprob_module.no_sync()
        else:
            sync = contextlib.nullcontext()
        with sync:  # no_sync must cover the backward too
            with update_autocast(cfg, device):
                if rows:
                    tokens, mask, prefix = micro_batch(rollouts, prefix_length, rows, device)
                    if with_entropy:
                        logprobs, entropy = logprob_module(tokens, mask, with_entropy=True, prefix=prefix)
                    else:
                        logprobs = logprob_module(tokens, mask, prefix=prefix)
                        entropy = None
                    logprobs = logprobs.float()
                    if old is None:
                        pi_old = logprobs.detach()
                    else:
                        pi_old = old[index]
                    loss, clipped_here = policy_loss(logprobs, pi_old, advantages[rows].to(device), mask, num_tokens,
                                                     cfg.clip_ratio, entropy, cfg.entropy_coef)
                    loss = loss * world
                    clipped += int(clipped_here)
                else:
                    loss = logprob_module(torch.zeros(1, 2, dtype=torch.long, device=device)).sum() * 0.0
            loss.backward()  # outside autocast, as torch recommends
    return clipped


def policy_update(model, logprob_module, optimizer, rollouts, cfg, rank, world, device):
    """Phases 7-8: TRR++ advantages over the step's rollouts from every rank, then one clipped AdamW
    step per mini-batch (cfg.mini_batches), each on PPO's clipped surrogate against pi_old (trr.py).
    -> {"grad_norm": mean over the mini-batches before clipping, "clip_fraction": share of the step's
    response tokens whose ratio was clipped, over all ranks}."""
    advantages = step_advantages(rollouts, rank)
    plans = []  # per mini-batch: (micro-batches, response tokens over all ranks)
    for indices in mini_batch_slices(len(rollouts), cfg.mini_batches):
        num_tokens = sum(all_gather(sum(len(rollouts[i].response_tokens) for i in indices)))
        # A rollout with zero advantage (e.g. its whole group was malformed: std 0) adds nothing to
        # the clipped objective, so without an entropy bonus it is not run at all; it still counts in
        # num_tokens, as L requires.
        active = []
        for i in indices:
            if advantages[i] != 0 or cfg.entropy_coef > 0:
                active.append(i)
        plans.append((micro_batches(rollouts, active, cfg, logprob_module), max(1, num_tokens)))
    old_per_mini_batch = [None]  # the first mini-batch steps from the weights that took the rollouts
    for batches, _ in plans[1:]:
        old_per_mini_batch.append(old_logprobs(logprob_module, rollouts, batches, cfg, device))
    grad_norms = []
    clipped = 0
    for (batches, num_tokens), old in zip(plans, old_per_mini_batch):
        optimizer.zero_grad(set_to_none=True)
        clipped += accumulate_gradients(logprob_module, rollouts, batches, advantages, old, num_tokens, world, cfg,
                                        device)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # the gradients' memory goes to the sampler's KV cache meanwhile
    all_tokens = max(1, sum(all_gather(sum(len(r.response_tokens) for r in rollouts))))
    return {"grad_norm": sum(grad_norms) / len(grad_norms), "clip_fraction": sum(all_gather(clipped)) / all_tokens}


# ----------------------------------------------------------------------------- the loop
def self_play_step(step, model, logprob_module, optimizer, buffer_map, executor, sampler, cfg, rank, world, device,
                   log, external_log):
    """One training step: phases 1-6 (rollouts of all six groups), phases 7-8 (one update), then rank 0
    writes metrics and samples. -> False if a signal stopped it before it changed anything, else True."""
    sampler.tokens = 0
    sampler.seconds = 0.0
    executor.seconds = 0.0
    collected = collect_rollouts(step, buffer_map, executor, sampler, cfg, rank, world)
    if collected is None:
        return False
    rollouts, samples = collected
    update_started = time.time()
    for param_group in optimizer.param_groups:
        param_group["lr"] = learning_rate(cfg, step)
    update = policy_update(model, logprob_module, optimizer, rollouts, cfg, rank, world, device)
    sampler.refresh(model)
    update_seconds = time.time() - update_started
    summaries = gather_lists([rollout.summary() for rollout in rollouts])
    timing = all_gather({"tokens": sampler.tokens, "seconds": sampler.seconds})
    if rank == 0:
        tokens = sum(t["tokens"] for t in timing)
        slowest = max(t["seconds"] for t in timing)
        metrics = {"step": step + 1}
        metrics.update(rundir.group_metrics(summaries))
        metrics["grad_norm"] = update["grad_norm"]
        metrics["clip_fraction"] = update["clip_fraction"]
        metrics["lr"] = learning_rate(cfg, step)
        for task_type in TASKS:
            metrics[f"buffer/{task_type}"] = len(buffer_map[task_type])
        metrics["tokens_per_s"] = tokens / max(1e-9, slowest)
        metrics["time/sampling"] = sampler.seconds
        metrics["time/execution"] = executor.seconds
        metrics["time/update"] = update_seconds
        rundir.write_step_logs(cfg.out, metrics, samples, external_log)
        log(rundir.step_summary(metrics, cfg.steps))
    return True


def executor_workers(cfg):
    """Sandbox workers per rank: the ranks of a node share its cores, since oversubscribed sandboxes
    would time out correct programs."""
    if cfg.exec_workers:
        return cfg.exec_workers
    ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, len(os.sched_getaffinity(0)) // ranks_on_node)


def train(cfg, sample_fn=generate):
    """The whole run: set up, seed the buffers (unless the run directory has seeds), then the steps, with
    a checkpoint every checkpoint_every steps, after the last, and when a signal stops the run (STOP).
    -> the trained model and the buffers."""
    rank, world, device = setup_distributed(cfg)

    def log(message):
        if rank == 0:
            print(message)

    # rank 0 alone picks and checks the run directory; every rank stops on its error
    error = None
    if rank == 0:
        error = rundir.prepare_run_dir(cfg)  # sets cfg.out when it was not given
    chosen = all_gather({"out": cfg.out, "error": error})[0]
    cfg.out = chosen["out"]
    if chosen["error"]:
        sys.exit(chosen["error"] if rank == 0 else 1)
    checkpoint = os.path.join(cfg.out, "checkpoint")
    if cfg.resume and os.path.isdir(checkpoint):
        weights_from = checkpoint
    else:
        weights_from = cfg.model
    try:
        model, tokenizer = load_model(weights_from, device=device, dtype=torch.float32)
    except (FileNotFoundError, ValueError) as error:  # a bad checkpoint: one line, no traceback
        sys.exit(f"azr: {error}")
    cfg.prompt_format = resolve_prompt_format(cfg.prompt_format, cfg.model, tokenizer)
    log(f"model {cfg.model}, prompt format {cfg.prompt_format}")
    model.activation_checkpointing = cfg.activation_checkpointing
    model.train()  # no dropout here: train mode only switches activation checkpointing on
    if rank == 0:
        rundir.save_config(cfg)
    logprob_module = wrap_for_training(model, cfg, device, world)
    optimizer = make_optimizer(model, cfg, world)
    start_step = 0
    if cfg.resume:
        start_step = rundir.load_checkpoint(cfg.out, model, logprob_module, optimizer)
        if rank == 0:
            rundir.drop_logs_after(cfg.out, start_step)

    workers = executor_workers(cfg)
    with Executor(workers=workers, timeout_s=cfg.exec_timeout_s, memory_mb=cfg.exec_memory_mb,
                  banned_modules=BANNED_MODULES, max_output_chars=cfg.max_output_chars) as pool:
        executor = TimedExecutor(pool, chunk=8 * workers)
        copy = sampler_model(model, device, compute_dtype(cfg, device))  # first, so the cache budget sees it
        cache = sampler_cache(cfg, model.config, device, pending_update_bytes(logprob_module, optimizer))
        cache_bytes = cache.rows * cache.capacity * KVCache.bytes_per_token(model.config, cache.k[0].dtype)
        log(f"KV cache: {cache.rows} rows of {cache.capacity} tokens, {cache_bytes / 2 ** 30:.2f} GiB")
        sampler = Sampler(copy, tokenizer, cfg, device, cache, sample_fn, sampler_decoder(copy, cfg, device))
        buffer_map = rundir.open_buffers(cfg, rank)
        external_log = rundir.open_external_log(cfg) if rank == 0 else None
        with stop_on_signals():
            steps_done = start_step
            if not rundir.has_seeds(cfg.out):
                STOP.stopped = not seed_buffers(buffer_map, executor, sampler, cfg, rank, world, log)
                if rank == 0 and not STOP.stopped:
                    rundir.save_seeds(cfg.out, buffer_map)
            checkpointed = start_step
            for step in range(start_step, cfg.steps):
                if STOP.stopped:
                    break
                if self_play_step(step, model, logprob_module, optimizer, buffer_map, executor, sampler, cfg, rank,
                                  world, device, log, external_log):
                    steps_done = step + 1
                STOP.stopped = stop_requested() and steps_done < cfg.steps
                due = STOP.stopped or steps_done % cfg.checkpoint_every == 0 or steps_done == cfg.steps
                if due and steps_done > checkpointed:
                    rundir.save_checkpoint(cfg.out, model, logprob_module, sampler.tokenizer, cfg.prompt_format,
                                           optimizer, steps_done, rank)
                    checkpointed = steps_done
        if external_log is not None:
            external_log.close()
    if STOP.stopped:
        where = f"after step {steps_done} of {cfg.steps}" if rundir.has_seeds(cfg.out) else "while seeding"
        log(f"azr: stopped by {signal.Signals(STOP.signal).name} {where}; the checkpoint and buffers are in "
            f"{cfg.out}. Resume with: {resume_command(cfg.out)}")
    if dist.is_initialized():
        dist.barrier()
    return model, buffer_map


def main(argv=None, sample_fn=generate):
    cfg = parse_config(argv)
    error = check_config(cfg)
    if error:
        sys.exit(error)
    if cfg.plot:
        return rundir.plot_run(cfg.plot)
    try:
        train(cfg, sample_fn)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if STOP.stopped:
        sys.exit(128 + STOP.signal)  # as a shell reports a process ended by the signal: the run is not done


if __name__ == "__main__":
    main()
