"""TRR++ advantages and the clipped policy-gradient loss against hand and independent (numpy) computations."""
import numpy as np
import pytest
import torch

from trr import policy_loss, trr_advantages


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


def reinforce_loss(logprobs, advantages, mask, num_tokens):
    """The on-policy REINFORCE loss, written independently: -(1/N) sum A * log pi over response tokens."""
    return -(logprobs * advantages[:, None] * mask).sum() / num_tokens


def test_one_mini_batch_is_reinforce():
    # pi_old = pi (detached): every ratio is 1, the loss is -(1/N) sum A and the gradient is REINFORCE's.
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss, clipped = policy_loss(logprobs, logprobs.detach(), advantages, mask, 4, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-(2 * 2 - 1 * 2) / 4)
    assert clipped.item() == 0
    loss.backward()
    ours = logprobs.grad.clone()
    logprobs.grad = None
    reinforce_loss(logprobs, advantages, mask, 4).backward()
    assert torch.equal(ours, logprobs.grad)  # bit for bit


def numpy_clipped_loss(logprobs, old, advantages, mask, num_tokens, eps, entropy, entropy_coef):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) in numpy, and its gradient in log pi."""
    ratio = np.exp(logprobs - old)
    a = advantages[:, None]
    unclipped = ratio * a
    clipped = np.clip(ratio, 1 - eps, 1 + eps) * a
    objective = np.minimum(unclipped, clipped) + entropy_coef * entropy
    loss = -(objective * mask).sum() / num_tokens
    # d/dlogpi of min(r A, clip(r) A): r A where the unclipped term is the smaller one, else 0
    gradient = -np.where(unclipped <= clipped, ratio * a, 0.0) * mask / num_tokens
    return loss, gradient


def test_clipped_loss_matches_numpy_reference():
    generator = np.random.default_rng(0)
    B, T = 6, 9
    logprobs = generator.normal(-2, 0.5, (B, T))
    old = logprobs + generator.normal(0, 0.3, (B, T))  # ratios spread well past 1 +- 0.2
    advantages = generator.normal(0, 1, B)
    mask = (generator.random((B, T)) < 0.7).astype(float)
    entropy = generator.random((B, T)) * 3
    want_loss, want_gradient = numpy_clipped_loss(logprobs, old, advantages, mask, 40, 0.2, entropy, 0.01)
    ours = torch.tensor(logprobs, requires_grad=True)
    loss, clipped = policy_loss(ours, torch.tensor(old), torch.tensor(advantages), torch.tensor(mask), 40, 0.2,
                                torch.tensor(entropy), 0.01)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-9)
    np.testing.assert_allclose(ours.grad.numpy(), want_gradient, rtol=1e-9, atol=1e-12)
    assert 0 < clipped.item() < mask.sum()


@pytest.mark.parametrize("ratio, advantage, moves", [(1.3, 1.0, False), (0.7, -1.0, False), (1.3, -1.0, True),
                                                     (0.7, 1.0, True), (1.1, 1.0, True), (0.9, -1.0, True)])
def test_clipped_tokens_have_no_gradient(ratio, advantage, moves):
    # Past 1 + eps with A > 0 (or below 1 - eps with A < 0) the objective is flat: no gradient. In the
    # other direction, or inside the range, the token still learns.
    logprobs = torch.tensor([[-1.0]], requires_grad=True)
    old = logprobs.detach() - np.log(ratio)
    loss, clipped = policy_loss(logprobs, old, torch.tensor([advantage]), torch.ones(1, 1), 1, clip_ratio=0.2)
    loss.backward()
    assert (logprobs.grad.abs().item() > 0) == moves
    assert clipped.item() == (0 if moves else 1)


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
        return policy_loss(logprobs, logprobs.detach(), advantages[rows], mask[rows], num_tokens, 0.2)[0]

    def gradient(splits):
        model.zero_grad()
        for rows in torch.arange(B).chunk(splits):
            micro_batch_loss(rows).backward()
        return [p.grad.clone() for p in model.parameters()]

    for whole, split in zip(gradient(1), gradient(num_micro_batches)):
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-7)
