"""The NASNet/MnasNet controller network: a one-layer LSTM that emits one decision per step.

Step ``t`` reads an embedding of the previous decision (a learned start token at ``t = 0``) and a softmax head
of its own turns the LSTM output into ``num_choices[t]`` logits. Heads are stored as one padded tensor
``[T, max_k, H]`` so that scoring whole sequences (teacher forcing, used by every update) is a single LSTM call
and one ``einsum`` instead of a Python loop; padded logits are masked out and never sampled.
Logits are divided by ``temperature`` and, optionally, squashed by ``tanh_constant * tanh(.)`` (ENAS), which
keeps the policy from collapsing early.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from controllers.base import PolicyDiverged


class LSTMPolicy(nn.Module):
    def __init__(
        self,
        num_choices: Sequence[int],
        *,
        hidden_size: int = 100,
        temperature: float = 1.0,
        tanh_constant: float | None = None,
        init_range: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_choices = tuple(int(k) for k in num_choices)
        self.temperature = float(temperature)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        steps, max_k = len(self.num_choices), max(self.num_choices)
        offsets = [0]
        for k in self.num_choices[:-1]:
            offsets.append(offsets[-1] + k)
        # Embedding row 0 is the start token; decision t choice j is row 1 + offsets[t] + j.
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long) + 1, persistent=False)
        self.embedding = nn.Embedding(1 + sum(self.num_choices), hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.head_weight = nn.Parameter(torch.empty(steps, max_k, hidden_size))
        self.head_bias = nn.Parameter(torch.zeros(steps, max_k))
        mask = torch.ones(steps, max_k, dtype=torch.bool)
        for t, k in enumerate(self.num_choices):
            mask[t, :k] = False
        self.register_buffer("pad_mask", mask, persistent=False)
        for p in self.parameters():
            nn.init.uniform_(p, -init_range, init_range)  # near-uniform start, as ENAS/NASNet

    def _logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` sequences step by step -> (tokens [n, T] long, log_probs [n], entropies [n])."""
        tokens = torch.empty(n, len(self.num_choices), dtype=torch.long)
        log_prob = torch.zeros(n)
        entropy = torch.zeros(n)
        inp = self.embedding(torch.zeros(n, 1, dtype=torch.long))
        state = None
        for t, k in enumerate(self.num_choices):
            out, state = self.lstm(inp, state)
            logits = self._logits(out[:, 0] @ self.head_weight[t, :k].T + self.head_bias[t, :k])
            logp = torch.log_softmax(logits, dim=-1)
            if not bool(torch.isfinite(logp).all()):  # torch.multinomial's own error would name no cause
                raise PolicyDiverged(f"controller policy diverged: the logits of decision {t} are not finite "
                                     f"(NaN or inf parameters after an update; lower controller.lr or set "
                                     f"controller.grad_clip)")
            choice = torch.multinomial(logp.exp(), 1, generator=generator)
            tokens[:, t] = choice[:, 0]
            log_prob += logp.gather(1, choice)[:, 0]
            entropy -= (logp.exp() * logp).sum(-1)
            inp = self.embedding(choice + self.offsets[t])
        return tokens, log_prob, entropy

    def evaluate(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score given sequences (teacher forcing) -> (log_probs [n], entropies [n]), differentiable."""
        n, steps = tokens.shape
        prev = torch.cat([torch.zeros(n, 1, dtype=torch.long), tokens[:, :-1] + self.offsets[:-1]], dim=1)
        out, _ = self.lstm(self.embedding(prev))
        logits = torch.einsum("nth,tkh->ntk", out, self.head_weight) + self.head_bias
        # A large finite fill, not -inf: exp() is still exactly 0, and p * log p stays 0 with finite gradients.
        logits = self._logits(logits).masked_fill(self.pad_mask, -1e9)
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp.gather(2, tokens.unsqueeze(-1)).squeeze(-1).sum(1)
        plogp = torch.where(self.pad_mask, torch.zeros((), dtype=logp.dtype), logp.exp() * logp)
        return chosen, -plogp.sum((1, 2))
