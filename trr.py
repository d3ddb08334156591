"""TRR++ advantages and the policy-gradient loss (AZR paper, eq. 8; docs/algorithm.md, TRR++ and the update).

Task-Relative REINFORCE++: every rollout belongs to one of six groups (task type x role). Its
advantage is its reward normalised by the mean and population std of *its own group* over the
whole step (all ranks), one scalar per sequence, broadcast to every response token:

    A = (r - mean_g) / (std_g + eps)

The update is the one the authors ran (verl's PPO actor): the step's rollouts are split into
mini-batches, one AdamW step each, and each token's loss is PPO's clipped surrogate against the
log-probs pi_old the policy gave the rollouts before the first mini-batch, minus an entropy bonus:

    ratio_t = pi(y_t | x, y_<t) / pi_old(y_t | x, y_<t)
    L = -(1 / N_tok) * sum_{rollouts} sum_{response tokens t} [ min(ratio_t * A, clip(ratio_t, 1 - eps_c, 1 + eps_c) * A)
                                                               + c_ent * H_t ]

N_tok counts the response tokens of the mini-batch once (all ranks, all micro-batches), which makes
the gradient independent of how the mini-batch is split into micro-batches or ranks. With one
mini-batch pi_old = pi, every ratio is 1, nothing is clipped, and the gradient is REINFORCE's:
-(1 / N_tok) * sum A * grad log pi.
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


def policy_loss(token_logprobs, old_logprobs, advantages, mask, num_tokens, clip_ratio, entropy=None,
                entropy_coef=0.0):
    """The clipped-surrogate loss of one micro-batch, scaled by its mini-batch's response-token count.

    token_logprobs: (B, T) log pi of each target token (differentiable); old_logprobs: (B, T) log pi_old
    of the same tokens (no gradient); advantages: (B,) one per sequence; mask: (B, T) 1 on response
    tokens (the sampled EOS included), 0 on prompt and padding; num_tokens: response tokens in the
    whole mini-batch, all ranks and micro-batches (an int); entropy: (B, T) entropy of pi at each
    target position, needed when entropy_coef > 0.
    Summing this loss over a mini-batch's micro-batches gives the L of the module docstring.
    -> (loss, number of response tokens whose ratio was clipped).
    """
    advantages = advantages[:, None].to(token_logprobs.dtype)
    ratio = torch.exp(token_logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    # The min keeps the pessimistic objective: once a token's ratio has left [1 - eps, 1 + eps] in the
    # direction its advantage pushes, the clipped (constant) term wins and its gradient is zero.
    surrogate = torch.minimum(unclipped, clipped)
    objective = surrogate * mask
    if entropy_coef:
        objective = objective + entropy_coef * entropy * mask
    clipped_count = ((clipped < unclipped) & (mask > 0)).sum()
    return -objective.sum() / num_tokens, clipped_count
