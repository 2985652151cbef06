"""Mixture-of-Experts training: routing statistics, load balancing (DeepSeek-V3's auxiliary-loss-free bias,
Switch-style and sequence-wise auxiliary losses, router z-loss) through hooks on the routers of
transformers' DeepSeek-V3, Qwen3-MoE and Mixtral models (docs/moe.md)."""
