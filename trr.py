"""TRR++ advantages and the policy-gradient loss (AZR paper, eq. 8; docs/algorithm.md, TRR++ and Loss).

Task-Relative REINFORCE++: every rollout belongs to one of six groups (task type x role). Its
advantage is its reward normalised by the mean and population std of *its own group* over the
whole step (all ranks), one scalar per sequence, broadcast to every response token:

    A = (r - mean_g) / (std_g + eps)

The loss is the on-policy REINFORCE objective (the PPO ratio is 1, so there is nothing to clip):

    L = -(1 / N_tok) * sum_{rollouts} sum_{response tokens t} A * log pi(y_t | x, y_<t)

N_tok counts the response tokens of the whole step once (all ranks, all micro-batches), which makes
the gradient independent of how the step is split into micro-batches or ranks.
"""
import torch


def trr_advantages(rewards, group_ids, eps=1e-6):
    """Per-group normalised advantages.

    rewards: (N,) float, one per rollout; group_ids: (N,) int, the rollout's (type, role) group.
    Returns (N,) float32. A group with fewer than 2 rollouts or zero std gets advantage 0.
    Pass the rewards of the whole step (gathered across ranks) so the statistics are global.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    group_ids = torch.as_tensor(group_ids, dtype=torch.long)
    advantages = torch.zeros_like(rewards)
    for group in group_ids.unique():
        in_group = group_ids == group
        group_rewards = rewards[in_group]
        if group_rewards.numel() < 2:
            continue
        std = group_rewards.std(correction=0)  # population std, as in the paper
        if std == 0:
            continue
        advantages[in_group] = (group_rewards - group_rewards.mean()) / (std + eps)
    return advantages.float()


def policy_gradient_loss(token_logprobs, advantages, mask, num_tokens):
    """REINFORCE loss of one micro-batch, scaled by the step's total response-token count.

    token_logprobs: (B, T) log pi of each target token; advantages: (B,) one per sequence;
    mask: (B, T) 1 on response tokens (the sampled EOS included), 0 on prompt and padding;
    num_tokens: response tokens in the whole step, all ranks and micro-batches (an int).
    Summing this loss over the step's micro-batches gives the L of the module docstring.
    """
    weighted = token_logprobs * advantages[:, None].to(token_logprobs.dtype) * mask
    return -weighted.sum() / num_tokens
