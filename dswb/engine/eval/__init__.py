"""Evaluation: held-out loss (`loss`), task accuracy by generation (`task`), preference pairs
(`pairs`: reward-model and DPO accuracy) and `dswb eval` of a saved model (`saved_model`)."""
