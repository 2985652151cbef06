"""Rollouts for PPO and GRPO: prompts in, sampled completions with their log-probs out.

`RolloutSampler` is the one interface a generation backend implements (a vLLM backend can slot in
later); `HFRolloutSampler` is the built-in one: batched, KV-cached sampling with any transformers
causal LM, driven by its own decoding loop rather than `model.generate` (no logits processors or
stopping criteria, preallocated outputs and KV cache, no device synchronisation but a periodic
"all ended?" check, ended rows dropped from the batch, one prefill per prompt for its samples;
`dswb bench rollout` measures each against `generate`). `sequence_logprobs`
scores given completions under a model (the trainer's new/old/reference log-probs) and agrees
with the sampler's log-probs for the same tokens.

Layout shared by both: a row is `[left padding | prompt | completion | right padding]`. Prompts
are left-padded to the longest prompt of the batch; the attention mask hides the padding and
`position_ids` count real tokens only (`cumsum(mask) - 1`), so padding shifts no position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dswb.engine.data.batches.collate import left_pad
from dswb.engine.model.device import autocast
from dswb.engine.rl.sampling import sample_next, scaled_log_softmax


@dataclass
class Rollouts:
    """Sampled completions, one row per (prompt, sample); rows of one prompt are adjacent."""

    prompt_ids: list[list[int]]   # the row's prompt (bos included, as given)
    prompt_index: torch.Tensor    # [B] long: index of the row's prompt in the input list
    completion_ids: torch.Tensor  # [B, T] long, right-padded with pad_id (T = longest completion)
    completion_mask: torch.Tensor  # [B, T] long: 1 for generated tokens, the stop token included
    logprobs: torch.Tensor        # [B, T] float32, under log_softmax(logits / temperature); 0 where masked
    ended: torch.Tensor           # [B] bool: stopped on a stop token (else hit max_new_tokens)
    lengths: torch.Tensor         # [B] long: completion lengths (stop token included)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, rows: torch.Tensor) -> "Rollouts":
        """The given rows (a long index or bool mask tensor), e.g. a minibatch."""
        rows = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
        keep = rows.tolist()
        return Rollouts(prompt_ids=[self.prompt_ids[i] for i in keep], prompt_index=self.prompt_index[rows],
                        completion_ids=self.completion_ids[rows], completion_mask=self.completion_mask[rows],
                        logprobs=self.logprobs[rows], ended=self.ended[rows], lengths=self.lengths[rows])


class RolloutSampler(Protocol):
    """What the PPO and GRPO stages need from a generation backend (see `HFRolloutSampler.generate`)."""

    def generate(self, prompts: list[list[int]], *, samples_per_prompt: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, stop_ids: Sequence[int] = (),
                 generator: torch.Generator | None = None) -> Rollouts: ...


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting real tokens only; padding gets 0 (as `generate` does)."""
    return (mask.long().cumsum(-1) - 1).clamp_(min=0)


def draw_uniforms(rows: int, steps: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """`[rows, steps]` uniforms, one per (row, step), drawn at once so chunking cannot reorder them."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(rows, steps, generator=generator, device=gen_device).to(device)


class HFRolloutSampler:
    """KV-cached batched sampling with a transformers causal LM (see the module docstring).

    - `batch_size` caps the rows decoded at once (memory). A row's tokens do not depend on it: the
      random numbers of every (row, step) are drawn up front, so a row samples the same tokens
      whenever its logits are the same (on a CPU in fp32 they are, up to rounding differences
      between padded shapes, which can flip a draw only when it falls within ~1e-7 of a boundary).
    - `check_every`: steps between "has every row ended?" checks. Each check is one device
      synchronisation, so CUDA checks every 4 steps by default (at most 3 wasted steps).
    - `shrink`: at a check, drop the rows that ended from the batch (and the KV cache) when at
      most this fraction of the rows still runs; 0 never shrinks.
    - `preallocate`: keep the KV cache in buffers sized for prompt + max_new_tokens instead of
      growing it by concatenation each step (plain full-attention models only; others keep
      transformers' `DynamicCache` as is).
    - `share_prefill`: the rows of one prompt (`samples_per_prompt` > 1) share one prefill (the
      prompt runs once and its cache is repeated), when a chunk holds whole groups.
    """

    def __init__(self, model, pad_id: int, device, amp_dtype=None, batch_size: int | None = None,
                 check_every: int | None = None, shrink: float = 0.75, preallocate: bool = True,
                 share_prefill: bool = True) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.batch_size = batch_size
        self.check_every = check_every or (4 if self.device.type == "cuda" else 1)
        self.shrink = shrink
        self.preallocate = preallocate
        self.share_prefill = share_prefill

    def generate(self, prompts: list[list[int]], *, samples_per_prompt: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, stop_ids: Sequence[int] = (),
                 generator: torch.Generator | None = None) -> Rollouts:
        """Sample `samples_per_prompt` completions of each prompt (token id lists, bos included).

        Temperature 0 is greedy (argmax); its log-probs are then under the temperature-1
        distribution. Top-p truncates the distribution sampled from, not the one scored.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt and no empty prompt")
        if max_new_tokens < 1 or samples_per_prompt < 1:
            raise ValueError("max_new_tokens and samples_per_prompt must be >= 1")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        group = samples_per_prompt
        rows = [list(p) for p in prompts for _ in range(group)]
        u = draw_uniforms(len(rows), max_new_tokens, generator, self.device) if temperature > 0 else None
        stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=self.device) if stop_ids else None
        size = self.batch_size or len(rows)
        if self.share_prefill and group > 1 and size >= group:
            size -= size % group  # chunks of whole groups share their prefill
        else:
            group = 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                chunks = [self._decode(rows[i:i + size], None if u is None else u[i:i + size], max_new_tokens,
                                       temperature, top_p, stop, group) for i in range(0, len(rows), size)]
        finally:
            self.model.train(was_training)
        ids, live, logps = _concat(chunks, self.pad_id)
        lengths = live.sum(1)
        last = ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        ended = torch.isin(last, stop) if stop is not None else torch.zeros_like(lengths, dtype=torch.bool)
        index = torch.arange(len(prompts), device=self.device).repeat_interleave(samples_per_prompt)
        return Rollouts(prompt_ids=rows, prompt_index=index, completion_ids=ids, completion_mask=live, logprobs=logps,
                        ended=ended, lengths=lengths)

    def _forward(self, ids, mask, pos, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]

    def _new_cache(self, capacity: int) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        if self.preallocate and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
        return cache

    def _decode(self, rows, u, max_new: int, temperature: float, top_p: float, stop, group: int):
        """Decode one chunk: `(ids, mask, logprobs)`, each `[n, T]` with T = its longest completion."""
        dev, n = self.device, len(rows)
        ids, prompt_mask = left_pad(rows[::group], self.pad_id, dev)
        width = ids.shape[1]
        padded = not bool(prompt_mask.all())
        attn = torch.cat([prompt_mask, prompt_mask.new_ones(len(ids), max_new)], 1) if padded else None
        next_pos = prompt_mask.sum(1, keepdim=True)
        cache = self._new_cache(width + max_new)
        logits = self._forward(ids, attn[:, :width] if padded else None, positions(prompt_mask), cache)
        if group > 1:
            cache.batch_repeat_interleave(group)
            logits, next_pos = logits.repeat_interleave(group, 0), next_pos.repeat_interleave(group, 0)
            attn = attn.repeat_interleave(group, 0) if padded else None
        tokens = torch.full((n, max_new), self.pad_id, dtype=torch.long, device=dev)
        logps = torch.zeros((n, max_new), dtype=torch.float32, device=dev)
        live = torch.zeros((n, max_new), dtype=torch.long, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        rows_now = None  # indices of the rows still in the batch, once it has shrunk
        for t in range(max_new):
            u_t = None if u is None else (u[:, t] if rows_now is None else u[rows_now, t])
            tok, lp = sample_next(logits, temperature, top_p, u=u_t)
            tok.masked_fill_(done, self.pad_id)
            lp.masked_fill_(done, 0.0)
            if rows_now is None:
                tokens[:, t], logps[:, t], live[:, t] = tok, lp, ~done
            else:
                tokens[rows_now, t], logps[rows_now, t], live[rows_now, t] = tok, lp, (~done).long()
            if stop is not None:
                done |= torch.isin(tok, stop)
            if t + 1 == max_new:
                break
            if stop is not None and (t + 1) % self.check_every == 0:
                running = int((~done).sum())
                if running == 0:
                    break
                if running <= self.shrink * len(done):
                    keep = (~done).nonzero().squeeze(1)
                    rows_now = keep if rows_now is None else rows_now[keep]
                    cache.batch_select_indices(keep)
                    tok, done, next_pos = tok[keep], done[keep], next_pos[keep]
                    attn = attn[keep] if padded else None
            logits = self._forward(tok.unsqueeze(1), attn[:, :width + t + 1] if padded else None,
                                   next_pos + t, cache)
        longest = int(live.sum(1).max())
        return tokens[:, :longest], live[:, :longest], logps[:, :longest]


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` that writes into buffers of a fixed capacity instead of concatenating.

    `keys`/`values` are views of the filled part, so attention sees exactly what a
    `DynamicLayer` would hold, without a copy of the whole cache at every step.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.filled = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self.key_buf = key_states.new_empty(b, h, self.capacity, d)
        self.value_buf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.filled = 0
        self.keys, self.values = self.key_buf[:, :, :0], self.value_buf[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        self.key_buf[:, :, self.filled:end] = key_states
        self.value_buf[:, :, self.filled:end] = value_states
        self.filled = end
        self.keys, self.values = self.key_buf[:, :, :end], self.value_buf[:, :, :end]
        return self.keys, self.values

    def _reindex(self, pick) -> None:
        if self.is_initialized:
            self.key_buf, self.value_buf = pick(self.key_buf), pick(self.value_buf)
            self.keys, self.values = self.key_buf[:, :, :self.filled], self.value_buf[:, :, :self.filled]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._reindex(lambda buf: buf.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._reindex(lambda buf: buf[indices])

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a preallocated rollout cache is never cropped")


def _pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def _concat(chunks, pad_id: int):
    width = max(c[0].shape[1] for c in chunks)
    return (torch.cat([_pad_right(c[0], width, pad_id) for c in chunks]),
            torch.cat([_pad_right(c[1], width, 0) for c in chunks]),
            torch.cat([_pad_right(c[2], width, 0.0) for c in chunks]))


def scoring_inputs(prompt_ids: list[list[int]], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                   pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, position_ids)` that score completions in one forward.

    The sampler's row layout without the last completion token (it predicts nothing): the
    outputs at the last `T` positions are the predictions of the `T` completion tokens. Positions
    continue from the prompt even past a row's end (the mask hides those tokens).
    """
    device = completion_ids.device
    ids, prompt_mask = left_pad(prompt_ids, pad_id, device)
    width = completion_ids.shape[1]
    inputs = torch.cat([ids, completion_ids[:, :-1]], 1)
    mask = torch.cat([prompt_mask, completion_mask[:, :-1].long()], 1)
    completion_pos = prompt_mask.sum(1, keepdim=True) + torch.arange(width - 1, device=device)
    return inputs, mask, torch.cat([positions(prompt_mask), completion_pos], 1)


def sequence_logprobs(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, temperature: float = 1.0, amp_dtype=None,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies `[B, T]` of `completion_ids` after each row's prompt, in one forward.

    Rows are laid out as the sampler lays them out (left-padded prompts, then the completion);
    the distribution is `log_softmax(logits / temperature)` (temperature <= 0 counts as 1, as the
    sampler scores greedy tokens), entropy is that distribution's, and masked positions are 0.
    Runs under the caller's grad mode and the model's current train/eval mode: wrap it in
    `torch.no_grad()` for old/reference log-probs, call it plainly in the loss.
    """
    device = completion_ids.device
    width = completion_ids.shape[1]
    inputs, mask, pos = scoring_inputs(prompt_ids, completion_ids, completion_mask, pad_id)
    with autocast(device, amp_dtype):
        logits = model(input_ids=inputs, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=width).logits
    logp_all = scaled_log_softmax(logits, temperature)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    keep = completion_mask.bool()
    return logp.masked_fill(~keep, 0.0), entropy.masked_fill(~keep, 0.0)
