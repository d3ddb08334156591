"""Absolute Zero self-play: the config and the training loop, top to bottom.

One model plays two roles against a Python executor (spec: ../shared/docs/azr-spec.md). Each step,
for each task type (deduction, abduction, induction):
  1. propose: batch_size proposer prompts, each showing references sampled from that type's buffer;
  2. validate the proposals in the executor (buffers.score_proposals);
  3. learnability: n_solve_samples solver rollouts per valid proposal -> r_propose = 1 - s (eq. 4);
  4. add valid proposals to the buffer;
  5. solve: batch_size tasks (this step's new ones first, topped up from the buffer), scored 1/0;
then TRR++ advantages over the six (type, role) groups (eq. 8) and one AdamW step on all 6 x batch_size
rollouts. The buffers are seeded first (spec section 9).

Run:  python azr.py                                  (CPU preset + embedded SmolLM2-135M when no GPU)
      torchrun --nproc_per_node=8 azr.py --model DIR (the paper's settings on a GPU node)
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from tqdm import tqdm

import buffers
from buffers import ROLES, TASK_TYPES, Rewards, TaskBuffer
from executor import BANNED_MODULES, Executor
from model import (CPU_DEFAULT_MODEL, EMBEDDED_MODELS, KVCache, Transformer, default_stop_ids, generate, load_model,
                   recorded_prompt_format, save_hf_checkpoint)
from trr import policy_gradient_loss, trr_advantages


@dataclass
class Config:
    # run
    model: str = CPU_DEFAULT_MODEL  # HF checkpoint dir (Qwen2/2.5, Qwen3, Llama 3) or an embedded model's name
    prompt_format: str = "auto"  # chat | plain | auto: chat for embedded/instruct checkpoints that record it
    device: str = "auto"  # auto | cpu | cuda
    preset: str = "auto"  # auto (cpu when CUDA is absent) | gpu | cpu: the defaults below are the gpu preset
    out: str = ""  # run directory; default runs/<timestamp>
    resume: str = ""  # continue the run in this directory
    seed_from: str = ""  # reuse the seed buffers of another run
    plot: str = ""  # only plot this run's metrics to a PNG and exit
    seed: int = 0
    steps: int = 500
    checkpoint_every: int = 50
    samples_per_step: int = 2  # decoded proposals and solutions per group written to samples.jsonl
    # self-play (spec sections 2, 5, 8, 9)
    batch_size: int = 64  # rollouts per (task type, role) per step, across all ranks
    num_references: int = 6  # K
    n_solve_samples: int = 8  # solver rollouts per valid proposal for learnability
    seed_size: int = 256
    seed_max_rounds: int = 20
    max_prompt_tokens: int = 6144
    max_response_tokens: int = 8096
    temperature: float = 1.0
    top_p: float = 1.0
    format_penalty: float = -1.0  # malformed response or unparseable payload (eq. 6)
    wrong_penalty: float = -0.5  # solver: well-formed but wrong
    invalid_penalty: float = -1.0  # proposer: well-formed, but the task fails validation
    unlearnable_penalty: float = -0.5  # proposer: valid, but solved by all or none of the rollouts
    # executor (spec sections 4, 7)
    exec_timeout_s: float = 5.0
    exec_workers: int = 0  # 0: one per CPU core
    exec_memory_mb: int = 1024
    max_output_chars: int = 1000
    # optimisation (spec section 6)
    lr: float = 1e-6
    lr_warmup_steps: int = 0  # linear warm-up from lr / lr_warmup_steps; 0: constant lr from the first step
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 4  # sequences per forward/backward
    generation_batch_size: int = 128  # sequences decoded together (bounds the KV cache)
    activation_checkpointing: bool = True
    zero: bool = False  # shard AdamW state across ranks (ZeroRedundancyOptimizer)
    fsdp: bool = False  # FSDP2: shard weights, gradients and AdamW state across ranks (7B/8B on 80 GB GPUs)
    kv_cache_gib: float = 0.0  # sampler KV cache per GPU; 0: half the memory free after setup (CPU: unused)


# Sized so `python azr.py` trains Qwen2.5-Coder-0.5B-Instruct on a 2-core CPU for about an hour and the
# model measurably improves (README "CPU run"). The learning rate is 10x the paper's because the run is
# ~100x shorter; the warm-up keeps Adam's first steps (which move every weight by about lr) from
# collapsing the response format, which a constant 5e-5 did in one step.
CPU_PRESET = dict(steps=6, checkpoint_every=3, batch_size=3, num_references=2, n_solve_samples=4,
                  seed_size=4, seed_max_rounds=2, max_prompt_tokens=1536, max_response_tokens=224,
                  exec_timeout_s=2.0, lr=1e-5, lr_warmup_steps=2, micro_batch_size=2, generation_batch_size=48,
                  activation_checkpointing=False)


def parse_config(argv=None):
    """Defaults <- preset <- the resumed run's config.json <- explicit CLI flags."""
    parser = argparse.ArgumentParser(description="Absolute Zero self-play training.")
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=field.type, default=None, metavar=field.name.upper())
    explicit = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
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
        if preset == "cpu" or (preset == "auto" and (device == "cpu" or not torch.cuda.is_available())):
            values.update(CPU_PRESET)
    values.update(explicit)
    return Config(**{k: v for k, v in values.items() if k in Config.__dataclass_fields__})


# ----------------------------------------------------------------------------- distributed
def setup_distributed(cfg):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; nccl on CUDA, gloo on CPU (spec section 10)."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if (world > 1 or cfg.fsdp) and not dist.is_initialized():  # FSDP needs a process group even alone
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, (dist.get_world_size() if dist.is_initialized() else 1), device


def all_gather(obj):
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# ----------------------------------------------------------------------------- sampling
@dataclass
class Rollout:
    """One trained sequence: prompt and sampled response tokens, its group and its reward."""
    task_type: str
    role: str
    prompt_tokens: list
    response_tokens: list
    response_text: str
    reward: float = 0.0
    format_ok: bool = True
    valid: bool = True  # proposer: the proposal passed validation
    solve_rate: float = float("nan")  # proposer: s over the learnability rollouts; solver: 1/0

    @property
    def group(self):
        return TASK_TYPES.index(self.task_type) * len(ROLES) + ROLES.index(self.role)

    def summary(self):
        """What the metrics need, without the tokens (cheap to gather across ranks)."""
        return {"group": f"{self.task_type}/{self.role}", "reward": self.reward, "format_ok": self.format_ok,
                "valid": self.valid, "solve_rate": self.solve_rate, "length": len(self.response_tokens)}


class Sampler:
    """Turns task texts into prompt tokens (in the run's prompt format), decodes in batches that fill
    the run's KV cache, with a progress bar, and counts tokens. `model` is the sampler's own copy of the
    weights (sampler_model)."""

    def __init__(self, model, tokenizer, cfg, device, cache, sample_fn=generate):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.sample_fn, self.stop_ids = sample_fn, default_stop_ids(tokenizer)
        self.cache = cache
        self.tokens, self.seconds = 0, 0.0  # sampled this step, for tokens/s

    def encode(self, task_text):
        return buffers.encode_prompt(self.tokenizer, task_text, self.cfg.prompt_format)

    def fits(self, prompt_tokens):
        return len(prompt_tokens) <= self.cfg.max_prompt_tokens

    def __call__(self, prompts, n, seed, desc):
        """prompts: token-id lists -> for each prompt, n (tokens, text) responses."""
        start = time.time()
        per_call = max(1, self.cache.rows // n)
        results = []
        with tqdm(total=len(prompts) * n, desc=desc, unit="seq", leave=False) as bar:
            for i in range(0, len(prompts), per_call):
                samples = self.sample_fn(self.model, prompts[i:i + per_call], self.cfg.max_response_tokens,
                                         temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                         stop_ids=self.stop_ids, n=n, seed=seed + i, cache=self.cache)
                for group in samples:
                    results.append([(s.tokens, self.tokenizer.decode(s.tokens, skip_special_tokens=True))
                                    for s in group])
                    self.tokens += sum(len(s.tokens) for s in group)
                bar.update(len(samples) * n)
        self.seconds += time.time() - start
        return results


class TimedExecutor:
    """The executor behind a progress bar and a clock; buffers.py scores through its run_batch."""

    def __init__(self, executor, chunk):
        self.executor, self.chunk, self.seconds = executor, chunk, 0.0

    def run_batch(self, calls):
        start = time.time()
        results = []
        with tqdm(total=len(calls), desc="execute", unit="prog", leave=False) as bar:
            for i in range(0, len(calls), self.chunk):
                results += self.executor.run_batch(calls[i:i + self.chunk])
                bar.update(len(calls[i:i + self.chunk]))
        self.seconds += time.time() - start
        return results


def sampling_seed(cfg, step, rank, phase):
    """Different on every rank and phase, reproducible from (run seed, step)."""
    return random.Random(f"{cfg.seed}-{step}-{rank}-{phase}").getrandbits(48)


# ----------------------------------------------------------------------------- self-play pieces
# Each phase samples the prompts of all three task types in one call: decoding cost is mostly the
# weights' memory traffic per step, so one batch of 3B rows is far cheaper than three batches of B.

def sample_by_type(sampler, prompts_by_type, n, seed, desc):
    """{task_type: [prompt tokens]} -> {task_type: [n (tokens, text) responses per prompt]}."""
    groups = iter(sampler([prompt for prompts in prompts_by_type.values() for prompt in prompts], n, seed, desc))
    return {task_type: [next(groups) for _ in prompts] for task_type, prompts in prompts_by_type.items()}


def proposer_jobs(buffer_map, task_type, count, rng, sampler, num_references):
    """`count` proposer prompts for one task type, identical on every rank (shared rng).

    Returns [(references, prompt_tokens)]; a prompt over max_prompt_tokens is re-sampled, never
    truncated (spec section 3), and dropped after a few tries.
    """
    if task_type == "induction":  # one program from the union of the triplet buffers (spec section 2)
        union = buffer_map["deduction"].items + buffer_map["abduction"].items
        pool = list({(t.program, t.input): t for t in union}.values())  # the seeds are in both buffers
    jobs = []
    for _ in range(count):
        for _attempt in range(4):
            if task_type == "induction":
                references = rng.choice(pool)
            else:
                references = buffer_map[task_type].sample(num_references, rng)
            tokens = sampler.encode(buffers.proposer_prompt(task_type, references))
            if sampler.fits(tokens):
                jobs.append((references, tokens))
                break
    return jobs


def propose(jobs_by_type, executor, sampler, seed, rank, world):
    """Sample and validate this rank's slice of the jobs -> {task_type: [(job, response, Proposal)]}."""
    mine = {task_type: jobs[rank::world] for task_type, jobs in jobs_by_type.items()}
    responses = sample_by_type(sampler, {t: [tokens for _, tokens in jobs] for t, jobs in mine.items()}, 1, seed,
                               "propose")
    proposed = {}
    for task_type, jobs in mine.items():
        firsts = [group[0] for group in responses[task_type]]
        proposals = buffers.score_proposals(executor, task_type, [text for _, text in firsts],
                                            [references for references, _ in jobs])
        proposed[task_type] = list(zip(jobs, firsts, proposals))
    return proposed


def estimate_learnability(proposed, executor, sampler, cfg, seed):
    """{id(task): solve rate s} of every valid proposal over n_solve_samples rollouts (not trained on).

    A task whose solver prompt is over max_prompt_tokens gets no rollouts: its s stays NaN, which
    buffers.proposer_reward scores as unlearnable.
    """
    jobs = {t: [(p.task, sampler.encode(buffers.solver_prompt(t, p.task))) for _, _, p in items if p.valid]
            for t, items in proposed.items()}
    jobs = {t: [(task, tokens) for task, tokens in task_jobs if sampler.fits(tokens)] for t, task_jobs in jobs.items()}
    n = cfg.n_solve_samples
    responses = sample_by_type(sampler, {t: [tokens for _, tokens in j] for t, j in jobs.items()}, n, seed,
                               "learnability")
    solve_rates = {}
    for task_type, task_jobs in jobs.items():
        tasks = [task for task, _ in task_jobs]
        texts = [text for group in responses[task_type] for _, text in group]
        solutions = buffers.score_solutions(executor, task_type, [task for task in tasks for _ in range(n)], texts)
        for i, task in enumerate(tasks):
            solve_rates[id(task)] = sum(s.correct for s in solutions[i * n:(i + 1) * n]) / n
    return solve_rates


def add_gathered(buffer, tasks_per_rank):
    """Add every rank's new tasks in rank order so all buffers stay identical; returns them."""
    tasks = [task for rank_tasks in tasks_per_rank for task in rank_tasks]
    for task in tasks:
        buffer.add(task)
    return tasks


def solver_jobs(buffer, new_tasks, task_type, count, rng, sampler):
    """This step's new valid tasks first, topped up uniformly from the buffer (spec section 8)."""
    jobs = []
    candidates = list(new_tasks)
    for _attempt in range(4 * count + len(new_tasks)):
        if len(jobs) == count:
            break
        if not candidates:
            candidates = buffer.sample(count - len(jobs), rng)
        task = candidates.pop(0)
        tokens = sampler.encode(buffers.solver_prompt(task_type, task))
        if sampler.fits(tokens):
            jobs.append((task, tokens))
    return jobs


def seed_buffers(buffer_map, executor, sampler, cfg, rank, world, log):
    """Fill the buffers with valid proposals of the base model, no training (spec section 9): first the
    triplet buffers (deduction and abduction proposals both feed both), then induction tasks for their programs."""
    for phase, task_types in (("triplets", ("deduction", "abduction")), ("induction", ("induction",))):
        for round_index in range(cfg.seed_max_rounds):
            if all(len(buffer_map[t]) >= cfg.seed_size for t in task_types):
                break
            rng = random.Random(f"{cfg.seed}-seed-{phase}-{round_index}")
            jobs = {t: proposer_jobs(buffer_map, t, cfg.batch_size, rng, sampler, cfg.num_references)
                    for t in task_types}
            proposed = propose(jobs, executor, sampler, sampling_seed(cfg, -1 - round_index, rank, phase), rank, world)
            new = [p.task for items in proposed.values() for _, _, p in items if p.valid]
            for task in [task for rank_tasks in all_gather(new) for task in rank_tasks]:
                for task_type in task_types:  # the same seed set starts both triplet buffers
                    if len(buffer_map[task_type]) < cfg.seed_size:
                        buffer_map[task_type].add(task)
            log(f"seed round {round_index + 1}: " + ", ".join(f"{len(buffer_map[t])} {t}" for t in task_types))


def collect_rollouts(step, buffer_map, executor, sampler, cfg, rank, world):
    """Steps 1-7 of spec section 8 for every task type; returns this rank's rollouts and samples."""
    rewards = Rewards(format_error=cfg.format_penalty, wrong=cfg.wrong_penalty, invalid=cfg.invalid_penalty,
                      unlearnable=cfg.unlearnable_penalty)
    rng = random.Random(f"{cfg.seed}-step-{step}")  # same on every rank: same references and tasks
    jobs = {t: proposer_jobs(buffer_map, t, cfg.batch_size, rng, sampler, cfg.num_references) for t in TASK_TYPES}
    proposed = propose(jobs, executor, sampler, sampling_seed(cfg, step, rank, "propose"), rank, world)
    solve_rates = estimate_learnability(proposed, executor, sampler, cfg, sampling_seed(cfg, step, rank, "learn"))
    rollouts = []
    for task_type, items in proposed.items():
        for (_, prompt_tokens), (tokens, text), proposal in items:
            solve_rate = solve_rates.get(id(proposal.task), float("nan"))
            rollouts.append(Rollout(task_type, "propose", prompt_tokens, tokens, text,
                                    reward=buffers.proposer_reward(proposal, solve_rate, rewards),
                                    format_ok=proposal.parsed.ok, valid=proposal.valid, solve_rate=solve_rate))

    new_tasks = {t: add_gathered(buffer_map[t], all_gather([p.task for _, _, p in items if p.valid]))
                 for t, items in proposed.items()}
    jobs = {t: solver_jobs(buffer_map[t], new_tasks[t], t, cfg.batch_size, rng, sampler)[rank::world]
            for t in TASK_TYPES}
    responses = sample_by_type(sampler, {t: [tokens for _, tokens in j] for t, j in jobs.items()}, 1,
                               sampling_seed(cfg, step, rank, "solve"), "solve")
    for task_type, task_jobs in jobs.items():
        firsts = [group[0] for group in responses[task_type]]
        solutions = buffers.score_solutions(executor, task_type, [task for task, _ in task_jobs],
                                            [text for _, text in firsts], rewards)
        for (_, prompt_tokens), (tokens, text), solution in zip(task_jobs, firsts, solutions):
            rollouts.append(Rollout(task_type, "solve", prompt_tokens, tokens, text, reward=solution.reward,
                                    format_ok=solution.parsed.ok, solve_rate=float(solution.correct)))
    samples = []
    for task_type in TASK_TYPES:
        for role in ROLES:
            group = [r for r in rollouts if r.task_type == task_type and r.role == role]
            samples += [{"step": step + 1, "task_type": task_type, "role": role, "reward": r.reward,
                         "response": r.response_text} for r in group[:cfg.samples_per_step]]
    return rollouts, samples


# ----------------------------------------------------------------------------- the update
class TokenLogprobs(torch.nn.Module):
    """DDP wraps a module's forward; ours is the chunked per-token log-prob of model.py."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, mask=None):
        return self.model.token_logprobs(tokens, mask)


def micro_batch(rollouts, device):
    """Right-padded prompt+response tokens (B, T) and the response mask over targets (B, T-1)."""
    length = max(len(r.prompt_tokens) + len(r.response_tokens) for r in rollouts)
    tokens = torch.zeros(len(rollouts), length, dtype=torch.long)
    mask = torch.zeros(len(rollouts), length - 1)
    for row, r in enumerate(rollouts):
        sequence = r.prompt_tokens + r.response_tokens
        tokens[row, :len(sequence)] = torch.tensor(sequence)
        # target t is token t+1, so the response tokens are targets len(prompt)-1 ... len(sequence)-2
        mask[row, len(r.prompt_tokens) - 1:len(sequence) - 1] = 1
    return tokens.to(device), mask.to(device)


def accumulate_gradients(logprob_module, rollouts, advantages, num_tokens, world, cfg, device):
    """Backward of the TRR++ loss over micro-batches; the gradient ends as for one big batch.

    DDP averages gradients over ranks, so each rank's loss is multiplied by the world size to turn
    that average into the sum over ranks that L (divided by the global token count) needs (FSDP's
    reduce-scatter averages too). Under DDP only the last micro-batch all-reduces; a rank without
    rollouts still joins it with a zero-weight pass. FSDP gathers each block's weights in every
    micro-batch, so there every rank runs as many micro-batches as the busiest one.
    """
    order = sorted(range(len(rollouts)), key=lambda i: len(rollouts[i].prompt_tokens) + len(rollouts[i].response_tokens))
    batches = [order[i:i + cfg.micro_batch_size] for i in range(0, len(order), cfg.micro_batch_size)] or [[]]
    if isinstance(logprob_module, FSDPModule):
        most = max(all_gather(len(batches)))
        batches += [[] for _ in range(most - len(batches))]
    is_ddp = isinstance(logprob_module, torch.nn.parallel.DistributedDataParallel)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for index, rows in enumerate(tqdm(batches, desc="update", leave=False)):
        sync = logprob_module.no_sync() if is_ddp and index < len(batches) - 1 else contextlib.nullcontext()
        with sync:  # no_sync must cover the backward too
            with autocast:
                if rows:
                    tokens, mask = micro_batch([rollouts[i] for i in rows], device)
                    logprobs = logprob_module(tokens, mask).float()
                    loss = policy_gradient_loss(logprobs, advantages[rows].to(device), mask, num_tokens) * world
                else:
                    loss = logprob_module(torch.zeros(1, 2, dtype=torch.long, device=device)).sum() * 0.0
            loss.backward()  # outside autocast, as torch recommends


def policy_update(model, logprob_module, optimizer, rollouts, cfg, rank, world, device):
    """TRR++ over the step's rollouts from every rank, then one clipped AdamW step."""
    records = all_gather([(r.reward, r.group, len(r.response_tokens)) for r in rollouts])
    offset = sum(len(rank_records) for rank_records in records[:rank])
    everything = [record for rank_records in records for record in rank_records]
    advantages = trr_advantages([r for r, _, _ in everything], [g for _, g, _ in everything])
    advantages = advantages[offset:offset + len(rollouts)]
    num_tokens = max(1, sum(n for _, _, n in everything))
    # A rollout with zero advantage (e.g. its whole group was malformed: std 0) adds exactly nothing
    # to the gradient, so it is not run at all; it still counts in num_tokens, as L requires.
    active = [i for i in range(len(rollouts)) if advantages[i] != 0]
    optimizer.zero_grad(set_to_none=True)
    accumulate_gradients(logprob_module, [rollouts[i] for i in active], advantages[active], num_tokens, world,
                         cfg, device)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # the gradients' memory goes to the sampler's KV cache meanwhile
    return float(grad_norm)


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


def full_weights(model):
    """{name: full tensor} of every parameter, gathering FSDP shards one parameter at a time (every
    rank must call it). Tied weights appear once."""
    weights = {}
    for name, param in model.named_parameters():
        value = param.detach()
        weights[name] = value.full_tensor() if isinstance(value, DTensor) else value
    return weights


def sampler_model(model, device):
    """The sampler's permanent copy of the weights: bf16 on CUDA, so decoding never casts weights and
    its tensors keep fixed addresses (CUDA graphs replay against them); fp32 on CPU."""
    with torch.device("meta"):
        copy = Transformer(model.config)
    copy = copy.to(torch.bfloat16 if device.type == "cuda" else torch.float32).to_empty(device=device)
    copy.tie_weights()
    copy.requires_grad_(False)
    refresh_sampler_model(copy, model)
    return copy.eval()


@torch.no_grad()
def refresh_sampler_model(copy, model):
    """Copy the trained weights into the sampler's copy in place (FSDP: one parameter gathered at a
    time, cast to the copy's dtype before the gather, so bf16 travels)."""
    targets = dict(copy.named_parameters())
    for name, param in model.named_parameters():
        value = param.detach().to(targets[name].dtype)
        if isinstance(value, DTensor):
            value = value.full_tensor()
        targets[name].copy_(value)


KV_CACHE_FREE_FRACTION = 0.5  # default share of the free GPU memory for the KV cache; the update needs the rest


def sampler_cache(cfg, config, device):
    """The run's KV cache, allocated once: rows of max_prompt_tokens + max_response_tokens slots. On
    CUDA the rows are what the budget holds (--kv-cache-gib, else half the memory free now), at most
    generation_batch_size; on CPU generation_batch_size rows. The n_solve_samples rollouts of one
    prompt are decoded together, so the cache holds at least that many."""
    capacity = cfg.max_prompt_tokens + cfg.max_response_tokens
    if device.type != "cuda":
        rows = max(cfg.generation_batch_size, cfg.n_solve_samples)
        return KVCache(config, rows, capacity, torch.float32, device)
    if cfg.kv_cache_gib > 0:
        budget = cfg.kv_cache_gib * 2 ** 30
    else:
        free_bytes, _ = torch.cuda.mem_get_info(device)
        budget = KV_CACHE_FREE_FRACTION * free_bytes
    row_bytes = capacity * KVCache.bytes_per_token(config, torch.bfloat16)
    rows = min(cfg.generation_batch_size, int(budget // row_bytes))
    if rows < cfg.n_solve_samples:
        sys.exit(f"azr: a KV cache of {budget / 2 ** 30:.1f} GiB holds {rows} rollouts of {capacity} tokens "
                 f"({row_bytes / 2 ** 30:.2f} GiB each), fewer than --n-solve-samples {cfg.n_solve_samples}; "
                 "raise --kv-cache-gib or lower the token limits")
    return KVCache(config, rows, capacity, torch.bfloat16, device, row_bucket=8, length_bucket=256, cuda_graphs=True)


# ----------------------------------------------------------------------------- run directory
def write_json_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def group_metrics(summaries):
    """Per (type, role) group: mean reward, format-error rate, validity, solve rate, length."""
    metrics = {}
    for name in [f"{t}/{role}" for t in TASK_TYPES for role in ROLES]:
        group = [s for s in summaries if s["group"] == name]
        if not group:
            continue
        solve_rates = [s["solve_rate"] for s in group if not math.isnan(s["solve_rate"])]
        metrics[f"{name}/reward"] = sum(s["reward"] for s in group) / len(group)
        metrics[f"{name}/format_rate"] = sum(s["format_ok"] for s in group) / len(group)
        metrics[f"{name}/solve_rate"] = sum(solve_rates) / len(solve_rates) if solve_rates else None
        metrics[f"{name}/response_length"] = sum(s["length"] for s in group) / len(group)
        if name.endswith("/propose"):
            metrics[f"{name}/validity_rate"] = sum(s["valid"] for s in group) / len(group)
    return metrics


def save_checkpoint(run_dir, model, logprob_module, tokenizer, prompt_format, optimizer, step, rank):
    """An HF checkpoint directory (eval.py --model and transformers read it) plus optimizer state, RNG
    states and step, swapped in atomically. Under FSDP every rank writes its shard of the AdamW state
    (optimizer/, torch.distributed.checkpoint) and the weights are gathered for rank 0 to write."""
    tmp, final = os.path.join(run_dir, "checkpoint.tmp"), os.path.join(run_dir, "checkpoint")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    weights = model
    if isinstance(logprob_module, FSDPModule):
        dist.barrier()  # tmp exists before any rank writes into it
        dcp.save(get_optimizer_state_dict(logprob_module, optimizer), checkpoint_id=os.path.join(tmp, "optimizer"))
        weights = full_model(model)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
    if rank != 0:
        return
    save_hf_checkpoint(weights, tokenizer, tmp, prompt_format=prompt_format)
    if not isinstance(logprob_module, FSDPModule):
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    torch.save({"step": step, "python": random.getstate(), "torch": torch.get_rng_state()},
               os.path.join(tmp, "state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def full_model(model):
    """A plain fp32 CPU Transformer with the gathered weights of a sharded one (every rank gathers)."""
    state = {name: value.float().cpu() for name, value in full_weights(model).items()}
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    with torch.device("meta"):
        copy = Transformer(model.config)
    copy.load_state_dict(state, assign=True)
    copy.tie_weights()  # assign=True replaced both parameters; share one again
    return copy


def load_checkpoint(run_dir, logprob_module, optimizer, device):
    """Restore the optimizer state, RNG states and step of the latest checkpoint (its weights are the
    model train() loaded); returns the step to continue from (0 without one)."""
    path = os.path.join(run_dir, "checkpoint")
    if not os.path.isdir(path):
        return 0
    if isinstance(logprob_module, FSDPModule):
        state = get_optimizer_state_dict(logprob_module, optimizer)
        dcp.load(state, checkpoint_id=os.path.join(path, "optimizer"))
        set_optimizer_state_dict(logprob_module, optimizer, state)
    else:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location=device))
    state = torch.load(os.path.join(path, "state.pt"), weights_only=False)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    return state["step"]


def drop_logs_after(run_dir, step):
    """A resumed run repeats the steps after its checkpoint: drop their old metrics and samples lines."""
    for path in (os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "samples.jsonl")):
        if os.path.isfile(path):
            rows = read_json_lines(path)
            with open(path, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows if row["step"] <= step)


def read_json_lines(path):
    """The records of a JSONL log; a line torn by a kill is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


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
        for key in sorted({k for row in rows for k in row if k.endswith("/" + suffix)}):
            steps_values = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
            if steps_values:
                ax.plot(*zip(*steps_values), label=key.rsplit("/", 1)[0], marker=".")
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "metrics.png"), dpi=120)
    print(f"wrote {os.path.join(run_dir, 'metrics.png')}")


def prepare_run_dir(cfg):
    """Create (or check) the run directory before any work; returns a one-line error or None."""
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


def open_buffers(cfg, rank):
    """One JSONL-backed buffer per task type; identity seeds first (spec section 9).

    Rank 0 owns the files (it copies --seed-from seeds, repairs a torn last line, appends); the
    other ranks load the same content afterwards and keep their copies in memory only.
    """
    if rank == 0 and cfg.seed_from and not cfg.resume:
        for task_type in TASK_TYPES:
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
    buffer_map = {t: TaskBuffer(os.path.join(run_dir, f"buffer_{t}.jsonl")) for t in TASK_TYPES}
    for task_type, buffer in buffer_map.items():
        if not writable:
            buffer.path = None  # loaded; appends stay in memory
        if len(buffer) == 0:
            buffer.add(buffers.identity_induction_task() if task_type == "induction" else buffers.identity_triplet())
    return buffer_map


def resolve_prompt_format(prompt_format, model_name, tokenizer):
    """auto -> chat for the embedded instruct models and for checkpoints that record chat (ours), plain
    otherwise: base checkpoints ship chat templates too, so a template alone must not switch the
    paper's base-model runs to chat."""
    if prompt_format == "auto":
        prompt_format = recorded_prompt_format(model_name) or "plain"
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        sys.exit(f"azr: --prompt-format chat, but the tokenizer of {model_name} has no chat template")
    return prompt_format


def learning_rate(cfg, step):
    """Linear warm-up over the first lr_warmup_steps steps, then constant (the paper's schedule)."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    return cfg.lr


def train(cfg, sample_fn=generate):
    rank, world, device = setup_distributed(cfg)
    log = print if rank == 0 else (lambda *a, **k: None)
    # rank 0 alone picks and checks the run directory; every rank stops on its error
    error = prepare_run_dir(cfg) if rank == 0 else None  # sets cfg.out when it was not given
    cfg.out, error = all_gather((cfg.out, error))[0]
    if error:
        sys.exit(error if rank == 0 else 1)
    checkpoint = os.path.join(cfg.out, "checkpoint")
    resume_from = checkpoint if cfg.resume and os.path.isdir(checkpoint) else cfg.model
    try:
        model, tokenizer = load_model(resume_from, device=device, dtype=torch.float32)
    except (FileNotFoundError, ValueError) as error:  # a bad checkpoint: one line, no traceback
        sys.exit(f"azr: {error}")
    cfg.prompt_format = resolve_prompt_format(cfg.prompt_format, cfg.model, tokenizer)
    log(f"model {cfg.model}, prompt format {cfg.prompt_format}")
    model.activation_checkpointing = cfg.activation_checkpointing
    model.train()  # no dropout here: train mode only switches activation checkpointing on
    if rank == 0:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=2)
    logprob_module = TokenLogprobs(model)
    if cfg.fsdp:
        logprob_module = shard_model(logprob_module, device, world)
    elif world > 1:
        # gradient_as_bucket_view: gradients live in DDP's buckets instead of beside them (4 bytes/param).
        logprob_module = torch.nn.parallel.DistributedDataParallel(
            logprob_module, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    adamw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.zero and world > 1:
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, **adamw)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), **adamw)
    start_step = load_checkpoint(cfg.out, logprob_module, optimizer, device) if cfg.resume else 0
    if cfg.resume and rank == 0:
        drop_logs_after(cfg.out, start_step)

    # the ranks of a node share its cores: oversubscribed sandboxes would time out correct programs
    workers = cfg.exec_workers or max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    with Executor(workers=workers, timeout_s=cfg.exec_timeout_s, memory_mb=cfg.exec_memory_mb,
                  banned_modules=BANNED_MODULES, max_output_chars=cfg.max_output_chars) as pool:
        executor = TimedExecutor(pool, chunk=8 * workers)
        sampler = Sampler(sampler_model(model, device), tokenizer, cfg, device,
                          sampler_cache(cfg, model.config, device), sample_fn)
        buffer_map = open_buffers(cfg, rank)
        if not os.path.isdir(os.path.join(cfg.out, "seeds")):
            seed_buffers(buffer_map, executor, sampler, cfg, rank, world, log)
            if rank == 0:
                save_seeds(cfg.out, buffer_map)
        for step in range(start_step, cfg.steps):
            self_play_step(step, model, logprob_module, optimizer, buffer_map, executor, sampler, cfg, rank, world,
                           device, log)
    if dist.is_initialized():
        dist.barrier()
    return model, buffer_map


def save_seeds(run_dir, buffer_map):
    """Copy the seeded buffers to run_dir/seeds (atomically) for --resume and --seed-from."""
    seeds_dir = os.path.join(run_dir, "seeds")
    os.makedirs(seeds_dir + ".tmp", exist_ok=True)
    for task_type in TASK_TYPES:
        shutil.copyfile(buffer_map[task_type].path, os.path.join(seeds_dir + ".tmp", f"{task_type}.jsonl"))
    os.replace(seeds_dir + ".tmp", seeds_dir)


def self_play_step(step, model, logprob_module, optimizer, buffer_map, executor, sampler, cfg, rank, world, device,
                   log):
    """One training step: rollouts of all six groups, one update, then metrics, samples, checkpoint."""
    sampler.tokens, sampler.seconds, executor.seconds = 0, 0.0, 0.0
    rollouts, samples = collect_rollouts(step, buffer_map, executor, sampler, cfg, rank, world)
    update_started = time.time()
    for param_group in optimizer.param_groups:
        param_group["lr"] = learning_rate(cfg, step)
    grad_norm = policy_update(model, logprob_module, optimizer, rollouts, cfg, rank, world, device)
    refresh_sampler_model(sampler.model, model)
    update_seconds = time.time() - update_started
    summaries = [s for rank_summaries in all_gather([r.summary() for r in rollouts]) for s in rank_summaries]
    timing = all_gather((sampler.tokens, sampler.seconds))
    if rank == 0:
        metrics = {"step": step + 1, **group_metrics(summaries), "grad_norm": grad_norm, "lr": learning_rate(cfg, step),
                   **{f"buffer/{t}": len(buffer_map[t]) for t in TASK_TYPES},
                   "tokens_per_s": sum(t for t, _ in timing) / max(1e-9, max(s for _, s in timing)),
                   "time/sampling": sampler.seconds, "time/execution": executor.seconds,
                   "time/update": update_seconds}
        write_json_line(os.path.join(cfg.out, "metrics.jsonl"), metrics)
        for sample in samples:
            write_json_line(os.path.join(cfg.out, "samples.jsonl"), sample)
        log(step_summary(metrics, cfg.steps))
    if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
        save_checkpoint(cfg.out, model, logprob_module, sampler.tokenizer, cfg.prompt_format, optimizer, step + 1,
                        rank)


def step_summary(metrics, steps):
    """One line: per task type the proposer (P) and solver (S) rewards, validity and accuracy; then
    buffer sizes, speed and the time split."""
    def fmt(key, sign=""):
        return "  - " if metrics.get(key) is None else f"{metrics[key]:{sign}.2f}"

    parts = [f"step {metrics['step']}/{steps}"]
    for t in TASK_TYPES:
        # the format rates make a collapse visible at once: a group that is all malformed has zero
        # reward variance, so TRR++ gives it no gradient to recover with
        parts.append(f"{t[:3]} P {fmt(f'{t}/propose/reward', '+')} fmt {fmt(f'{t}/propose/format_rate')} "
                     f"valid {fmt(f'{t}/propose/validity_rate')} S {fmt(f'{t}/solve/reward', '+')} "
                     f"fmt {fmt(f'{t}/solve/format_rate')} acc {fmt(f'{t}/solve/solve_rate')}")
    return " | ".join(parts + ["buf " + "/".join(str(metrics[f"buffer/{t}"]) for t in TASK_TYPES),
                               f"{metrics['tokens_per_s']:.0f} tok/s",
                               f"sample {metrics['time/sampling']:.0f}s exec {metrics['time/execution']:.0f}s "
                               f"update {metrics['time/update']:.0f}s"])


def main(argv=None):
    cfg = parse_config(argv)
    if cfg.plot:
        return plot_run(cfg.plot)
    if cfg.device not in ("auto", "cpu", "cuda"):
        sys.exit(f"azr: --device must be auto, cpu or cuda, not {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        sys.exit("azr: --device cuda but CUDA is not available")
    if cfg.fsdp and cfg.zero:
        sys.exit("azr: --fsdp already shards the optimizer state; drop --zero")
    if cfg.fsdp and "MASTER_ADDR" not in os.environ:
        sys.exit("azr: --fsdp runs under torchrun, e.g. torchrun --nproc_per_node=8 azr.py --fsdp")
    if cfg.model not in EMBEDDED_MODELS and not os.path.isfile(os.path.join(cfg.model, "config.json")):
        sys.exit(f"azr: --model {cfg.model}: not an HF checkpoint directory (no config.json); "
                 f"pass one, or an embedded model: {', '.join(EMBEDDED_MODELS)}")
    if cfg.prompt_format not in ("auto",) + buffers.PROMPT_FORMATS:
        sys.exit(f"azr: --prompt-format must be auto, chat or plain, not {cfg.prompt_format!r}")
    for task_type in TASK_TYPES if cfg.seed_from else ():
        if not os.path.isfile(os.path.join(cfg.seed_from, "seeds", f"{task_type}.jsonl")):
            sys.exit(f"azr: --seed-from {cfg.seed_from}: no seeds/{task_type}.jsonl there")
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
