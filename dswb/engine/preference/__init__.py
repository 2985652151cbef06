"""Preference objectives as pure functions: the reward model's Bradley-Terry loss and DPO's losses."""
