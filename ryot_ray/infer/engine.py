"""A lean generation engine for Llama-architecture models: prefill, then decode.

It runs the decoder blocks of a `LlamaForCausalLM` itself, over a key/value cache
allocated once, so the per-token Python work is a loop over layers and nothing else.
It calls the model's own modules for the projections, norms and MLPs, which makes it
one code path for the fp32 reference (nn.Linear) and the frozen ternary model
(TernaryLinear): the only difference measured between them is the weights and kernels.

Sequences of a batch are left-padded to a common length; padding is masked out of
attention and does not shift any sequence's rotary positions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings, besides the EOS token
    seed: int = 0
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]]
    prompt_tokens: int  # padded prompt length of the batch
    ttft_s: float  # prefill and the first sampled token
    decode_step_s: list[float] = field(default_factory=list)  # one entry per later token

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Llama RMSNorm as one torch call: HF's module runs six small ops and two dtype
    casts, which cost more than the op itself at decode sizes."""
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)


class Engine:
    def __init__(self, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase,
                 max_batch: int = 1, max_length: int = 256):
        config = model.config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layers = model.model.layers
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.max_batch, self.max_length = max_batch, max_length
        shape = (len(self.layers), max_batch, self.kv_heads, max_length, self.head_dim)
        self.keys = torch.zeros(shape)
        self.values = torch.zeros(shape)
        positions = torch.arange(max_length).unsqueeze(0)
        self.cos, self.sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)

    @torch.no_grad()
    def _forward(self, tokens: torch.Tensor, start: int, rope: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Logits of the last position; tokens [B, T] fill cache slots start..start+T-1.

        `rope` [B, T] are the tokens' rotary positions; `allowed` [B, 1, T, start+T]
        says which cache slots each token may attend to.
        """
        batch, length = tokens.shape
        end = start + length
        cos, sin = self.cos[0, rope], self.sin[0, rope]
        # an additive mask, made once per step: a boolean one is converted in every layer
        bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
        hidden = self.model.model.embed_tokens(tokens)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            x = rms_norm(layer.input_layernorm, hidden)
            q = attention.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
            k = attention.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attention.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.keys[index, :batch, :, start:end] = k
            self.values[index, :batch, :, start:end] = v
            out = F.scaled_dot_product_attention(
                q, self.keys[index, :batch, :, :end], self.values[index, :batch, :, :end],
                attn_mask=bias, enable_gqa=self.heads != self.kv_heads,
            )
            hidden = hidden + attention.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
            hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
        return self.model.lm_head(rms_norm(self.model.model.norm, hidden[:, -1]))

    def _sample(self, logits: torch.Tensor, sampling: SamplingConfig, generators: list[torch.Generator]) -> torch.Tensor:
        """One token per row; each row draws from its own generator, so what a row samples
        does not depend on the rows beside it."""
        if sampling.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])

    def _encode(self, prompts: list[str], batch: int, max_new_tokens: int) -> list[list[int]]:
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"{batch} sequences; this engine takes 1 to {self.max_batch}")
        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        width = max(len(ids) for ids in encoded)
        if width + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({width}) + new tokens ({max_new_tokens}) "
                             f"exceed the cache length {self.max_length}")
        return encoded

    def generate(self, prompts: list[str], sampling: SamplingConfig = SamplingConfig()) -> Generation:
        """Answer a batch of prompts; row i samples with seed `sampling.seed + i`."""
        encoded = self._encode(prompts, len(prompts), sampling.max_new_tokens)
        width = max(len(ids) for ids in encoded)
        pad = torch.tensor([width - len(ids) for ids in encoded])
        tokens = torch.tensor([[self.tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in encoded])
        slots = torch.arange(self.max_length)
        real = slots.unsqueeze(0) >= pad.unsqueeze(1)  # [B, slots]: not padding
        causal = slots.unsqueeze(0) <= slots[:width].unsqueeze(1)  # [T, slots]
        # a padding position attends to itself only: no query row is fully masked, so
        # padding never carries NaN into the cache, whatever the attention kernel does
        itself = torch.eye(width, self.max_length, dtype=torch.bool)
        allowed = ((causal.unsqueeze(0) & real.unsqueeze(1)) | itself)[:, None, :, :width]
        rope = (torch.arange(width).unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
        begin = time.perf_counter()
        logits = self._forward(tokens, 0, rope, allowed)
        return self._decode(logits, pad, width, sampling, begin)

    def generate_paths(self, prompt: str, paths: int, sampling: SamplingConfig) -> Generation:
        """`paths` answers to one prompt, decoded as one batch over a single prefill: the
        prompt's key/value cache is computed once and copied to every path. Path i
        samples with seed `sampling.seed + i`, as row i of `generate` would."""
        (ids,) = self._encode([prompt], paths, sampling.max_new_tokens)
        width = len(ids)
        causal = torch.ones(width, width, dtype=torch.bool).tril()[None, None]
        begin = time.perf_counter()
        logits = self._forward(torch.tensor([ids]), 0, torch.arange(width)[None], causal)
        self.keys[:, 1:paths, :, :width] = self.keys[:, :1, :, :width]
        self.values[:, 1:paths, :, :width] = self.values[:, :1, :, :width]
        return self._decode(logits.expand(paths, -1), torch.zeros(paths, dtype=torch.long), width, sampling, begin)

    def _decode(self, logits: torch.Tensor, pad: torch.Tensor, width: int, sampling: SamplingConfig,
                begin: float) -> Generation:
        """Sample from the prefill's `logits`, then decode every row until it stops."""
        batch = len(pad)
        generators = [torch.Generator().manual_seed(sampling.seed + row) for row in range(batch)]
        next_token = self._sample(logits, sampling, generators)
        ttft = time.perf_counter() - begin
        real = torch.arange(self.max_length).unsqueeze(0) >= pad.unsqueeze(1)
        outputs = [[] for _ in range(batch)]
        done = torch.zeros(batch, dtype=torch.bool)
        steps = []
        for step in range(sampling.max_new_tokens):
            for row in range(batch):
                if not done[row]:
                    outputs[row].append(int(next_token[row]))
            if not sampling.ignore_eos:
                done |= next_token == self.tokenizer.eos_token_id
            done |= torch.tensor([self._stopped(ids, sampling.stop) for ids in outputs])
            if bool(done.all()) or step + 1 == sampling.max_new_tokens:
                break
            begin = time.perf_counter()
            position = width + step
            allowed = real[:, None, None, : position + 1]
            rope = (position - pad).unsqueeze(1)
            logits = self._forward(next_token.unsqueeze(1), position, rope, allowed)
            next_token = self._sample(logits, sampling, generators)
            steps.append(time.perf_counter() - begin)
        texts = [self._text(ids, sampling.stop) for ids in outputs]
        return Generation(texts, outputs, width, ttft, steps)

    def _stopped(self, ids: list[int], stop: tuple[str, ...]) -> bool:
        return bool(stop) and any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in stop)

    def _text(self, ids: list[int], stop: tuple[str, ...]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [text.index(s) for s in stop if s in text]
        return text[: min(cuts)] if cuts else text
