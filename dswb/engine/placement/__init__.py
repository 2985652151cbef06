"""Placing one model's layers, and several models, on the devices of one process.

- `shapes`: a model's modules and their exact parameter counts from a config alone (no weights); for a
  Mixture-of-Experts model every expert (total) and what a token runs (active).
- `moe`: Mixture-of-Experts and latent-attention shapes from a config, and their activation estimates.
- `memory`: bytes per module by kind (weights, gradients, optimizer state, compute copies,
  activations) and FLOPs per token, as pure formulas; for a stage that trains LoRA adapters, a frozen
  base in the run's compute dtype (bf16 on GPUs, else fp32; NF4 / int8 projections for QLoRA) beside
  fp32 adapters, and the stage's reference and value model (`memory.adapter_stage`).
- `planner`: places the modules on devices in order, never splitting a decoder block.
- `report`: the plan as rows and plain text.
- `devices`, `layer_map`, `roles`: execution (torch): modules moved to their devices, hidden states
  moved at the boundaries, and several models (policy, reference, value, reward) placed together.

`shapes`, `moe`, `memory`, `planner` and `report` are pure Python: `dswb plan` imports no torch.
"""
