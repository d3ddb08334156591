"""TRR++ advantages and the policy-gradient loss against hand and independent computations."""
import numpy as np
import pytest
import torch

from trr import policy_gradient_loss, trr_advantages


def test_hand_computed_example():
    # group 0: rewards 1, 0 -> mean 0.5, population std 0.5 -> +1, -1
    # group 1: rewards -1, -0.5, 0 -> mean -0.5, std sqrt(1/6) -> -/+ sqrt(1.5), 0
    # group 2: a single rollout -> 0; group 3: zero std -> 0
    rewards = [1.0, 0.0, -1.0, -0.5, 0.0, 0.7, 0.3, 0.3]
    groups = [0, 0, 1, 1, 1, 2, 3, 3]
    eps = 1e-6
    expected = [0.5 / (0.5 + eps), -0.5 / (0.5 + eps),
                -0.5 / (np.sqrt(1 / 6) + eps), 0.0, 0.5 / (np.sqrt(1 / 6) + eps),
                0.0, 0.0, 0.0]
    got = trr_advantages(rewards, groups, eps=eps)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_matches_independent_per_group_computation():
    rng = np.random.default_rng(0)
    rewards = rng.choice([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0], size=300)
    groups = rng.integers(0, 6, size=300)
    got = trr_advantages(rewards, groups).numpy()
    for g in range(6):
        r = rewards[groups == g]
        want = (r - r.mean()) / (np.std(r) + 1e-6) if np.std(r) > 0 else np.zeros_like(r)
        np.testing.assert_allclose(got[groups == g], want, rtol=1e-5, atol=1e-6)
    # normalised groups have zero mean and unit std
    for g in range(6):
        assert abs(got[groups == g].mean()) < 1e-5
        assert abs(got[groups == g].std() - 1) < 1e-4


def test_loss_formula():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    # -(2*(-2-3) + -1*(-0.5-0.5)) / 4 = -(-10 + 1) / 4 = 2.25
    assert policy_gradient_loss(logprobs, advantages, mask, num_tokens=4).item() == pytest.approx(2.25)


@pytest.mark.parametrize("num_micro_batches", [2, 4])
def test_gradient_independent_of_micro_batching(num_micro_batches):
    torch.manual_seed(0)
    vocab, dim, B, T = 11, 8, 8, 7
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab))
    tokens = torch.randint(0, vocab, (B, T))
    lengths = torch.randint(2, T + 1, (B,))
    mask = (torch.arange(T - 1)[None, :] < (lengths[:, None] - 1)).float()  # (B, T-1)
    advantages = trr_advantages(torch.randn(B), torch.randint(0, 3, (B,)))
    num_tokens = int(mask.sum())

    def micro_batch_loss(rows):
        logits = model(tokens[rows, :-1])
        logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[rows, 1:, None]).squeeze(-1)
        return policy_gradient_loss(logprobs, advantages[rows], mask[rows], num_tokens)

    def gradient(splits):
        model.zero_grad()
        for rows in torch.arange(B).chunk(splits):
            micro_batch_loss(rows).backward()
        return [p.grad.clone() for p in model.parameters()]

    for whole, split in zip(gradient(1), gradient(num_micro_batches)):
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-7)
