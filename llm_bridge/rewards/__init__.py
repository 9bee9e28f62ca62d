"""Reward functions for `rl.reward_function` (verl custom_reward_function files)."""
