"""`[moe]`: Mixture-of-Experts routing statistics and load balancing; `[mtp]`: multi-token prediction.

Both apply to every training stage. `[moe]` does nothing on a dense model; `[mtp]` adds DeepSeek-V3's
extra prediction modules to the language-modelling stages (pretraining and SFT). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from dswb.config.fields import doc

BALANCES = ("auto", "aux_free", "aux_loss", "none")


@dataclass
class MoeConfig:
    """`[moe]`: routers of DeepSeek-V3, Qwen3-MoE and Mixtral models (docs/moe.md)."""

    balance: str = doc("auto", "Load balancing: aux_free (DeepSeek-V3's bias on the routing scores), aux_loss "
                       "(Switch-style loss), none; auto: aux_free where the router has a correction bias "
                       "(DeepSeek-V3), else aux_loss.", choices=BALANCES)
    bias_update_speed: float = doc(0.001, "aux_free: gamma in b_i += gamma * sign(mean load - load_i), after every "
                                   "optimizer step (0 freezes the bias).", min=0.0)
    aux_loss_coef: float = doc(-1.0, "aux_loss: weight of N * sum_i f_i * P_i (-1: the model config's "
                               "router_aux_loss_coef, else 0.001).", min=-1.0)
    seq_aux_alpha: float = doc(0.0, "DeepSeek-V3's complementary sequence-wise balance loss weight (theirs: 0.0001; "
                               "0 = off); with any balance.", min=0.0)
    z_loss: float = doc(0.0, "Router z-loss weight, mean of logsumexp(logits)^2 (ST-MoE used 0.001; 0 = off).", min=0.0)
    stats_every: int = doc(10, "Routing statistics (load, imbalance, entropy, gate weight) every N steps as a `moe` "
                           "event (0 = off; balancing still runs).", min=0)
    dead_after: int = doc(100, "An expert that receives no token for this many steps is dead (an alert).", min=1)
    collapse_share: float = doc(0.8, "Alert when one expert receives this share of a layer's tokens.", min=0.0, max=1.0)
    imbalance_window: int = doc(5, "Statistics points per window for the rising-imbalance alert.", min=1)
    imbalance_rise: float = doc(0.5, "Alert when a layer's max/mean load, averaged over a window, is this much above "
                                "the window before (0.5 = 50%) and above 1.5.", min=0.0)


@dataclass
class MtpConfig:
    """`[mtp]`: DeepSeek-V3's multi-token prediction (docs/mtp.md)."""

    depth: int = doc(0, "Extra tokens predicted per position, one module each (0 = off; DeepSeek-V3: 1).", min=0, max=4)
    weight: float = doc(0.3, "lambda: the MTP loss is lambda / depth * sum of the depths' cross-entropies.", min=0.0)
    late_weight: float = doc(0.1, "lambda from `late_from` on (DeepSeek-V3: 0.3, then 0.1).", min=0.0)
    late_from: float = doc(0.7, "Fraction of the stage's steps after which `late_weight` applies (1 = never).",
                           min=0.0, max=1.0)

