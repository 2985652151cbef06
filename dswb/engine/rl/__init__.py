"""Post-training RL pieces used by the PPO and GRPO stages.

Rollout sampling, advantages, losses and rewards, each a small module.
"""
