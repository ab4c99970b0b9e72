"""The model step where the native library cannot run: the trained model's own forward.

The same `LlamaForCausalLM` that was trained answers (one model definition for training
and inference), one `transformers` KV cache per sequence slot. Its knobs are the
model's own: the nested width through `use_width`, top-k activations through its
`TopK` modules, and int8 embeddings as int8-rounded weights (the values the native step
would use). Slower than the native step, and exact to the model's own definition.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import DynamicCache, LlamaForCausalLM

from ryot_ray.infer.freeze import int8_rows
from ryot_ray.model.matryoshka import MatryoshkaMLP, TopK, ffn_levels, use_width


def as_inference_model(model: LlamaForCausalLM, int8_embeddings: bool, sparse: bool) -> LlamaForCausalLM:
    """A copy of `model` with the inference configuration's choices applied: embeddings
    and lm_head rounded to int8 rows, top-k activations dropped with `sparse=False`.
    (BitLinear ternarizes its weight in every forward, as the frozen model holds it.)"""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    for module in model.modules():
        if isinstance(module, MatryoshkaMLP) and isinstance(module.sparsity, TopK) and not sparse:
            module.sparsity = torch.nn.Identity()
    if int8_embeddings:
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            codes, scale = int8_rows(weight)
            weight.copy_(codes.float() * scale[:, None])
    return model


class TorchStep:
    """`Step` over a torch model: each slot's rows run through the model with its cache."""

    def __init__(self, model: LlamaForCausalLM, slots: int, max_length: int, max_rows: int = 128):
        self.model, self.slots, self.max_length, self.max_rows = model, slots, max_length, max_rows
        self.widths = ffn_levels(model) or [model.config.intermediate_size]
        self.caches: list[DynamicCache | None] = [None] * slots

    def use_width(self, level: int) -> None:
        if ffn_levels(self.model):
            use_width(self.model, level)
        elif level != 0:
            raise ValueError(f"width level {level}: the FFN has 1 nested width")

    @torch.no_grad()
    def step(self, tokens, slots, positions, logit_rows) -> np.ndarray:
        tokens, slots, positions = (np.asarray(a) for a in (tokens, slots, positions))
        out: dict[int, np.ndarray] = {}
        wanted = set(int(r) for r in logit_rows)
        for slot in dict.fromkeys(slots.tolist()):  # each slot's rows, in order
            rows = np.flatnonzero(slots == slot)
            if positions[rows[0]] == 0:
                self.caches[slot] = DynamicCache(config=self.model.config)
            result = self.model(input_ids=torch.as_tensor(tokens[rows][None], dtype=torch.long),
                                position_ids=torch.as_tensor(positions[rows][None], dtype=torch.long),
                                cache=self.caches[slot], use_cache=True)
            self.caches[slot] = result.past_key_values
            for index, row in enumerate(rows):
                if row in wanted:
                    out[int(row)] = result.logits[0, index].float().numpy()
        return np.stack([out[int(r)] for r in logit_rows]) if len(logit_rows) else np.zeros((0, 0), np.float32)

    def copy_slot(self, source: int, target: int, length: int) -> None:
        cache = copy.deepcopy(self.caches[source])
        cache.crop(length - cache.get_seq_length())  # a count of tokens to remove, as a negative number
        self.caches[target] = cache
