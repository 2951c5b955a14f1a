"""Reinforcement learning: rollout (sampling), and later losses, advantages, rewards and the learner."""
