"""Rewards: pure functions of a child's measurements (no I/O). See ``rewards.objective``."""

from __future__ import annotations

from rewards.objective import AccuracyReward, MacsReward, MnasNetReward, RewardOverflow, check_accuracy, pareto_reward

__all__ = ["AccuracyReward", "MacsReward", "MnasNetReward", "RewardOverflow", "check_accuracy", "pareto_reward"]
