"""The scale-out path: an FSDP2 update on two gloo ranks against the single-process update, an FSDP run
that checkpoints and resumes, the sampler's weight copy, and decoding in a run's static KV cache."""
import os

import pytest
import torch
import torch.multiprocessing as mp
import transformers
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

import azr
import model as M
import rundir
from test_azr import ScriptedSampler, fixed_rollouts, read_jsonl, tiny_config
from test_model import TINY, hf_tiny, random_prompts

LR = 1e-3  # AdamW's first step moves every weight with a gradient by about lr


def init_rank(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)


def one_update(checkpoint, rollouts, rank, world, fsdp):
    """One policy_update on `rollouts` (this rank's slice), activation checkpointing on. -> (full weights
    after it, the sampler copy made before it and refreshed after, the gradient norm)."""
    model, _ = M.load_model(str(checkpoint))
    model.activation_checkpointing = True
    model.train()
    module = azr.TokenLogprobs(model)
    if fsdp:
        module = azr.shard_model(module, torch.device("cpu"), world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    copy = azr.sampler_model(model, torch.device("cpu"))
    # One mini-batch: the comparison is of one AdamW step from the same gradient, at 2e-6.
    cfg = azr.Config(micro_batch_size=3, lr=LR, mini_batches=1)
    update = azr.policy_update(model, module, optimizer, rollouts[rank::world], cfg, rank, world,
                               torch.device("cpu"))
    azr.refresh_sampler_model(copy, model)
    weights = {name: value.clone() for name, value in rundir.gathered_parameters(model)}
    return weights, {name: p.clone() for name, p in copy.named_parameters()}, update["grad_norm"]


def update_worker(rank, world, port, checkpoint, results):
    init_rank(rank, world, port)
    try:
        # 7 rollouts: rank 0 gets 4 (two micro-batches of 3), rank 1 gets 3 (one): the ranks must still
        # run the same number of FSDP forwards.
        weights, copy, grad_norm = one_update(checkpoint, fixed_rollouts(7), rank, world, fsdp=True)
        torch.save({"weights": weights, "copy": copy, "grad_norm": grad_norm}, os.path.join(results, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_update(tiny_checkpoint, tmp_path_factory):
    """Both ranks' results of one two-rank FSDP update."""
    results = tmp_path_factory.mktemp("fsdp-update")
    port = 29500 + (os.getpid() + 7) % 1000
    mp.spawn(update_worker, args=(2, port, str(tiny_checkpoint), str(results)), nprocs=2)
    return [torch.load(results / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.slow
def test_fsdp_update_equals_single_process_update(fsdp_update, tiny_checkpoint):
    initial, _ = M.load_model(str(tiny_checkpoint))
    initial = dict(initial.named_parameters())
    single, _, grad_norm = one_update(tiny_checkpoint, fixed_rollouts(7), 0, 1, fsdp=False)
    # AdamW's first step hardly depends on the gradient's scale; the norm does.
    assert fsdp_update[0]["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    moved = max((single[name] - initial[name]).abs().max().item() for name in single)
    assert moved > 0.5 * LR  # the step is visible far above the tolerance below
    for name, value in single.items():
        torch.testing.assert_close(fsdp_update[0]["weights"][name], value, rtol=0, atol=2e-6)
        assert torch.equal(fsdp_update[0]["weights"][name], fsdp_update[1]["weights"][name]), name


@pytest.mark.slow
def test_fsdp_refreshed_sampler_copy_equals_trained_weights(fsdp_update):
    for rank in range(2):
        weights, copy = fsdp_update[rank]["weights"], fsdp_update[rank]["copy"]
        assert weights.keys() == copy.keys()
        for name, value in weights.items():
            assert torch.equal(copy[name], value), name


def test_fsdp_sampler_copy_single_process_is_refreshed_in_place(tiny_checkpoint):
    model, _ = M.load_model(str(tiny_checkpoint))
    copy = azr.sampler_model(model, torch.device("cpu"))
    addresses = [p.data_ptr() for p in copy.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    azr.refresh_sampler_model(copy, model)
    assert [p.data_ptr() for p in copy.parameters()] == addresses  # fixed addresses: CUDA graphs stay valid
    assert copy.lm_head.weight is copy.embed.weight  # still tied like the trained model
    for (name, p), (_, q) in zip(model.named_parameters(), copy.named_parameters()):
        assert torch.equal(p, q), name


# ----------------------------------------------------------------------------- checkpoint and resume
def optimizer_state(model, optimizer):
    """{parameter name: (step, exp_avg, exp_avg_sq)} with FSDP shards gathered."""
    state = {}
    for name, param in model.named_parameters():
        entry = optimizer.state[param]
        moments = []
        for key in ("exp_avg", "exp_avg_sq"):
            value = entry[key]
            moments.append(value.full_tensor() if isinstance(value, DTensor) else value)
        state[name] = (float(entry["step"]), *moments)
    return state


def resume_worker(rank, world, port, checkpoint, out, results):
    init_rank(rank, world, port)
    try:
        _, tokenizer = M.load_model(str(checkpoint))
        saved = {}
        real_save = rundir.save_checkpoint

        def spy(run_dir, model, logprob_module, tokenizer, prompt_format, optimizer, step, rank):
            real_save(run_dir, model, logprob_module, tokenizer, prompt_format, optimizer, step, rank)
            saved["optimizer"] = optimizer_state(model, optimizer)

        rundir.save_checkpoint = spy
        azr.train(tiny_config(checkpoint, out, steps=1, fsdp=True, lr=LR), sample_fn=ScriptedSampler(tokenizer))
        rundir.save_checkpoint = real_save

        # What --resume restores: a fresh sharded model and optimizer, then load_checkpoint.
        model, _ = M.load_model(os.path.join(out, "checkpoint"))
        module = azr.shard_model(azr.TokenLogprobs(model), torch.device("cpu"), world)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        step = rundir.load_checkpoint(out, model, module, optimizer)
        restored = optimizer_state(model, optimizer)

        cfg = azr.parse_config(["--resume", out, "--steps", "2"])
        trained, _ = azr.train(cfg, sample_fn=ScriptedSampler(tokenizer))
        weights = dict(rundir.gathered_parameters(trained))
        torch.save({"saved": saved["optimizer"], "restored": restored, "step": step, "weights": weights},
                   os.path.join(results, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_fsdp_two_rank_run_checkpoints_and_resumes(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    port = 29500 + (os.getpid() + 13) % 1000
    mp.spawn(resume_worker, args=(2, port, str(tiny_checkpoint), str(out), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for result in ranks:
        assert result["step"] == 1
        for name, (step, exp_avg, exp_avg_sq) in result["saved"].items():
            restored = result["restored"][name]
            assert restored[0] == step == azr.Config().mini_batches  # one AdamW step per mini-batch
            assert torch.equal(restored[1], exp_avg) and torch.equal(restored[2], exp_avg_sq), name
    assert any(exp_avg.abs().sum() > 0 for _, exp_avg, _ in ranks[0]["saved"].values())
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 2
    # the final checkpoint holds the trained weights, and transformers reads them with our logits
    weights = ranks[0]["weights"]
    ours, _ = M.load_model(str(out / "checkpoint"))
    for name, p in ours.named_parameters():
        assert torch.equal(p, weights[name]), name
    tokens = torch.randint(0, 49152, (2, 7))
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), rtol=1e-4, atol=1e-4)


def test_fsdp_flag_errors_are_one_line():
    with pytest.raises(SystemExit) as exit_info:
        azr.main(["--fsdp", "--zero", "--device", "cpu"])
    assert "drop --zero" in exit_info.value.code


# ----------------------------------------------------------------------------- the run's KV cache
def test_fsdp_sampler_static_cache_greedy_equals_transformers(monkeypatch):
    """Greedy decoding in one reused cache (row and length buckets, in-place compaction) equals
    transformers' generate on a left-padded mixed-length batch."""
    hf = hf_tiny("qwen2")
    config = M.ModelConfig.from_hf(hf.config.to_dict())
    ours = M._build(config, hf.state_dict().get, "model.layers.", "model.embed_tokens.weight", "model.norm.weight",
                    "lm_head.weight")
    prompts = random_prompts([4, 13, 1, 8, 20, 6, 11])
    new_tokens = 30
    alone = [M.generate(ours, [p], new_tokens, temperature=0)[0][0] for p in prompts]
    stop = max(range(TINY["vocab_size"]), key=lambda t: sum(t in s.tokens[:15] for s in alone))
    monkeypatch.setattr(M, "FINISH_CHECK_EVERY", 2)
    compactions = []
    real_keep_rows = M.KVCache.keep_rows
    monkeypatch.setattr(M.KVCache, "keep_rows", lambda self, keep, used: (
        compactions.append(keep.shape[0]), real_keep_rows(self, keep, used)))
    cache = M.KVCache(config, rows=12, capacity=64, dtype=torch.float32, device="cpu", row_bucket=4,
                      length_bucket=8)
    M.generate(ours, random_prompts([30, 2, 9], seed=5), 25, temperature=1.0, n=3, seed=0, cache=cache)  # leaves stale data
    got = M.generate(ours, prompts, new_tokens, temperature=0, stop_ids=[stop], cache=cache)
    assert compactions and any(count % 4 for count in compactions)  # padded row buckets were used

    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        expected = hf.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                               max_new_tokens=new_tokens, eos_token_id=stop, pad_token_id=0)[:, width:].tolist()
    for row, samples in enumerate(got):
        reference = expected[row]
        cut = reference.index(stop) + 1 if stop in reference else new_tokens
        assert samples[0].tokens == reference[:cut], row


def test_fsdp_sampler_cache_too_small_is_an_error():
    config = M.ModelConfig()
    model = M.Transformer(config)
    cache = M.KVCache(config, rows=2, capacity=16, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="do not fit a KV cache"):
        M.generate(model, random_prompts([3, 4, 5]), 4, cache=cache)
    with pytest.raises(ValueError, match="do not fit a KV cache"):
        M.generate(model, random_prompts([14]), 4, cache=cache)


# ----------------------------------------------------------------------------- sharded checkpoints without gathers
def adamw_step(model, module, optimizer):
    """One AdamW step on a fixed loss (every parameter gets a gradient, so every one gets state)."""
    tokens = torch.randint(0, 49152, (2, 9), generator=torch.Generator().manual_seed(1))
    module(tokens).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sharded_checkpoint_worker(rank, world, port, checkpoint, out, results):
    """--zero: pending bytes, save without consolidating, resume reading only this rank's entries to the
    CPU; --fsdp: the gathered checkpoint copy exists on rank 0 only."""
    init_rank(rank, world, port)
    try:
        model, tokenizer = M.load_model(str(checkpoint))
        module = torch.nn.parallel.DistributedDataParallel(azr.TokenLogprobs(model))
        optimizer = azr.make_optimizer(model, azr.Config(zero=True, lr=LR), world)
        local_numel = sum(p.numel() for group in optimizer.optim.param_groups for p in group["params"])
        pending_before = azr.pending_update_bytes(module, optimizer)
        adamw_step(model, module, optimizer)
        pending_after = azr.pending_update_bytes(module, optimizer)
        rundir.save_checkpoint(out, model, module, tokenizer, "plain", optimizer, 1, rank)
        saved = {name: {key: value.clone() for key, value in state.items()}
                 for name, state in rundir.zero_shard_state(model, optimizer).items()}

        fresh, _ = M.load_model(str(checkpoint))
        fresh_module = torch.nn.parallel.DistributedDataParallel(azr.TokenLogprobs(fresh))
        fresh_optimizer = azr.make_optimizer(fresh, azr.Config(zero=True, lr=LR), world)
        read = []
        real_load = rundir.dcp.load

        def spy(state, checkpoint_id, no_dist):
            read.extend((name, value.device.type) for name, entry in state.items() for value in entry.values())
            real_load(state, checkpoint_id=checkpoint_id, no_dist=no_dist)

        rundir.dcp.load = spy
        step = rundir.load_checkpoint(out, fresh, fresh_module, fresh_optimizer)
        rundir.dcp.load = real_load
        restored = {name: {key: value.clone() for key, value in state.items()}
                    for name, state in rundir.zero_shard_state(fresh, fresh_optimizer).items()}

        sharded, _ = M.load_model(str(checkpoint))
        sharded_module = azr.shard_model(azr.TokenLogprobs(sharded), torch.device("cpu"), world)
        gathered = rundir.full_model(sharded, rank)
        gathered_weights = None if gathered is None else {n: p.clone() for n, p in gathered.named_parameters()}
        torch.save({"pending": (pending_before, pending_after, local_numel), "saved": saved, "restored": restored,
                    "read": read, "step": step, "gathered": gathered_weights},
                   os.path.join(results, f"rank{rank}.pt"))
        del sharded_module
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_checkpoints_touch_only_local_state(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    port = 29500 + (os.getpid() + 19) % 1000
    mp.spawn(sharded_checkpoint_worker, args=(2, port, str(tiny_checkpoint), str(out), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert os.path.isdir(out / "checkpoint" / "optimizer") and not os.path.exists(out / "checkpoint" / "optimizer.pt")
    initial, _ = M.load_model(str(tiny_checkpoint))
    all_names = {name for name, _ in initial.named_parameters()}
    owned = [set(result["saved"]) for result in ranks]
    assert owned[0] and owned[1] and not owned[0] & owned[1] and owned[0] | owned[1] == all_names
    for result, mine in zip(ranks, owned):
        pending_before, pending_after, local_numel = result["pending"]
        assert pending_before == 8 * local_numel  # the shard's two fp32 moments; DDP's buckets hold the gradients
        assert pending_after == 0
        assert result["step"] == 1
        assert {name for name, _ in result["read"]} == mine  # only this rank's entries are read ...
        assert {device for _, device in result["read"]} == {"cpu"}  # ... into CPU tensors
        for name, state in result["saved"].items():
            assert float(state["step"]) == 1.0 == float(result["restored"][name]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(result["restored"][name][key], state[key]), (name, key)
        assert any(state["exp_avg"].abs().sum() > 0 for state in result["saved"].values())
    # the same checkpoint resumed in one process without --zero: every parameter's state, from both shards
    model, _ = M.load_model(str(tiny_checkpoint))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    assert rundir.load_checkpoint(out, model, azr.TokenLogprobs(model), optimizer) == 1
    for name, param in model.named_parameters():
        saved = ranks[0]["saved"].get(name) or ranks[1]["saved"][name]
        assert torch.equal(optimizer.state[param]["exp_avg_sq"], saved["exp_avg_sq"]), name
    assert ranks[1]["gathered"] is None  # FSDP: only rank 0 keeps a host copy of the gathered weights
    for name, param in initial.named_parameters():
        assert torch.equal(ranks[0]["gathered"][name], param), name
