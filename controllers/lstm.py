"""What REINFORCE and PPO share: the LSTM policy, its Adam optimizer, the moving-average baseline, the RNG.

Updates never need the log-probabilities recorded at sampling time: the search loop calls ``update`` right
after the batch it sampled is evaluated, so the policy that sampled is the current one and PPO's "old"
log-probabilities are recomputed from it before its first gradient step.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence

import torch

from mnas_common.checks import is_int, is_number
from mnas_common.errors import first_line

from controllers.base import Controller, Sample, check_param
from controllers.policy import LSTMPolicy


class LSTMController(Controller):
    def __init__(
        self,
        num_choices: Sequence[int],
        *,
        seed: int = 0,
        hidden_size: int = 100,
        temperature: float = 1.0,
        tanh_constant: float | None = None,
        lr: float = 0.005,
        entropy_weight: float = 0.0001,
        baseline_decay: float = 0.95,
        grad_clip: float | None = None,
        init_range: float = 0.1,
    ) -> None:
        super().__init__(num_choices, seed=seed)
        # is_int, not isinstance(int): True is an int to Python and would build a one-unit LSTM
        check_param("hidden_size", hidden_size, is_int(hidden_size) and hidden_size >= 1, "an int >= 1")
        check_param("temperature", temperature, is_number(temperature) and temperature > 0, "a number > 0")
        check_param("tanh_constant", tanh_constant, tanh_constant is None or is_number(tanh_constant)
                    and tanh_constant > 0, "null or a number > 0")
        # Adam moves a parameter by about lr per step: above 1 it leaves the init's scale at once (1e38 overflowed
        # inside Adam's step, a RuntimeError traceback after the first batch)
        check_param("lr", lr, is_number(lr) and 0 < lr <= 1, "a number in (0, 1]")
        check_param("entropy_weight", entropy_weight, is_number(entropy_weight) and entropy_weight >= 0,
                    "a number >= 0")
        check_param("baseline_decay", baseline_decay, is_number(baseline_decay) and 0 <= baseline_decay < 1,
                    "in [0, 1)")
        check_param("grad_clip", grad_clip, grad_clip is None or is_number(grad_clip) and grad_clip > 0,
                    "null or a number > 0")
        check_param("init_range", init_range, is_number(init_range) and init_range > 0, "a number > 0")
        self.lr = float(lr)
        self.entropy_weight = float(entropy_weight)
        self.baseline_decay = float(baseline_decay)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        # Parameters are initialised from the controller's seed, independent of torch's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.policy = LSTMPolicy(self.num_choices, hidden_size=int(hidden_size), temperature=float(temperature),
                                     tanh_constant=tanh_constant, init_range=float(init_range))
        # a start the policy cannot sample from (init_range 1e38 overflows float32, temperature 1e-45 divides to
        # inf) is a config error now, not a torch.multinomial traceback at the first sample
        with torch.no_grad():
            log_prob, entropy = self.policy.evaluate(torch.zeros(1, len(self.num_choices), dtype=torch.long))
        if not bool(torch.isfinite(log_prob).all() and torch.isfinite(entropy).all()):
            raise ValueError(f"init_range {init_range!r} and temperature {temperature!r} give the policy logits "
                             "that are not finite (init_range is the uniform init's bound, 0.1 as in ENAS/NASNet)")
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        self.baseline: float | None = None
        self.updates = 0

    def sample(self, n: int, generator: torch.Generator | None = None) -> Sample:
        n = self._check_n(n)
        tokens, log_probs, entropies = self.policy.sample(n, self._rng(generator))
        return Sample(tokens=tokens.tolist(), log_probs=log_probs.tolist(), entropies=entropies.tolist())

    def log_prob(self, tokens: list[list[int]]) -> list[float]:
        """log p(tokens) under the current policy (what ``sample`` reported for the same sequences)."""
        seqs, _ = self._check_batch(tokens, [0.0] * len(list(tokens)))
        with torch.no_grad():
            return self.policy.evaluate(torch.tensor(seqs, dtype=torch.long))[0].tolist()

    def _advance_baseline(self, rewards: torch.Tensor) -> float:
        """Move the baseline towards this batch's mean reward; returns the value before the move."""
        mean = float(rewards.mean())
        before = mean if self.baseline is None else self.baseline
        self.baseline = mean if self.baseline is None else (
            self.baseline_decay * self.baseline + (1 - self.baseline_decay) * mean
        )
        return before

    def _step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            self.policy.parameters(), self.grad_clip if self.grad_clip is not None else float("inf")
        )
        self.optimizer.step()
        return float(norm)

    def update(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, float]:
        seqs, values = self._check_batch(tokens, rewards)
        stats = self._train(torch.tensor(seqs, dtype=torch.long), torch.tensor(values, dtype=torch.float32))
        self.updates += 1
        stats["reward_mean"] = float(sum(values) / len(values))
        stats["baseline"] = float(self.baseline)
        return stats

    @abstractmethod
    def _train(self, tokens: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]: ...

    def state_dict(self) -> dict:
        state = self._base_state()
        state.update(
            policy=copy.deepcopy(self.policy.state_dict()),
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            baseline=self.baseline,
            updates=self.updates,
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore parameters, Adam moments, baseline, update count and RNG from ``state_dict()``.

        Hyper-parameters are this controller's, not the state's: ``lr`` included (Adam keeps it in its state, and
        a controller configured with another ``lr`` would otherwise train at the saved one). Everything is checked
        first, the policy and optimizer by loading them into scratch copies; a refused state changes nothing.
        """
        base = self._check_base_state(state)
        for key in ("policy", "optimizer", "baseline", "updates"):
            if key not in state:
                raise ValueError(f"state is missing '{key}'; is it a '{self.name}' state_dict()?")
        baseline, updates = state["baseline"], state["updates"]
        check_param("state baseline", baseline, baseline is None or is_number(baseline), "null or a finite number")
        check_param("state updates", updates, is_int(updates) and updates >= 0, "an int >= 0")
        # one deepcopy of both: the scratch optimizer steps the scratch policy's parameters
        policy, optimizer = copy.deepcopy((self.policy, self.optimizer))
        self._load_policy(policy, state["policy"])
        self._load_optimizer(optimizer, policy, copy.deepcopy(state["optimizer"]))
        # checked: from here on nothing can fail
        self._apply_base_state(base)
        self.policy.load_state_dict(policy.state_dict())
        self.optimizer.load_state_dict(optimizer.state_dict())  # the scratch's own copies: no aliasing of `state`
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.baseline = None if baseline is None else float(baseline)
        self.updates = int(updates)

    @staticmethod
    def _load_policy(policy: LSTMPolicy, loaded: object) -> None:
        """Load ``loaded`` into ``policy``, or a one-line ValueError naming the first parameter that does not fit."""
        prefix = "state policy does not fit this controller"
        if not isinstance(loaded, dict):
            raise ValueError(f"{prefix}: expected a dict of tensors, got {type(loaded).__name__}")
        own = policy.state_dict()
        for name, value in own.items():
            theirs = loaded.get(name)
            if theirs is None:
                raise ValueError(f"{prefix}: {name} is missing")
            if not isinstance(theirs, torch.Tensor):
                raise ValueError(f"{prefix}: {name} is a {type(theirs).__name__}, not a tensor")
            if theirs.shape != value.shape:
                raise ValueError(f"{prefix}: {name} shape {list(theirs.shape)} in the state vs {list(value.shape)} "
                                 "here (hidden_size?)")
        extra = sorted(set(loaded) - set(own))
        if extra:
            raise ValueError(f"{prefix}: unexpected {', '.join(map(str, extra))}")
        try:
            policy.load_state_dict(loaded)
        except RuntimeError as exc:  # anything the checks above did not foresee
            raise ValueError(f"{prefix}: {first_line(exc)}") from None

    @staticmethod
    def _load_optimizer(optimizer: torch.optim.Optimizer, policy: LSTMPolicy, loaded: object) -> None:
        """Load ``loaded`` into ``optimizer`` (over ``policy``), or a one-line ValueError. Adam only checks the
        number of parameters per group; moments of another shape would load and fail at the first step."""
        prefix = "state optimizer does not fit this controller"
        if not isinstance(loaded, dict):
            raise ValueError(f"{prefix}: expected an optimizer state_dict(), got {type(loaded).__name__}")
        try:
            optimizer.load_state_dict(loaded)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise ValueError(f"{prefix}: {first_line(exc, with_type=isinstance(exc, KeyError))}") from None
        names = {id(p): name for name, p in policy.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                        raise ValueError(f"{prefix}: {key} of {names[id(p)]} shape {list(value.shape)} in the state "
                                         f"vs {list(p.shape)} here (hidden_size?)")
