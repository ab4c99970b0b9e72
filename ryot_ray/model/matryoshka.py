"""The FFN of a BitNet model: nested widths (Matryoshka, `mrl_depth`) and top-k
activation sparsity (Q-Sparse, `sparse_k`).

Width w of an FFN with intermediate size I uses the first w rows of gate and up and the
first w inputs of down: widths I, I/2, ... share prefixes of one set of weights, so a
narrower width computes less and reads fewer weights without a copy. Training samples
one width per micro-batch (every worker draws the same one), so a step costs what one
width costs and each width gets 1/depth of the updates.

The gate act(gate) · up (SiLU in a Llama, relu² in a bitnet block) is one autograd
function (`GateMul`) that keeps its inputs as the saved-activation knob says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ryot_ray.model.compression import SAVERS
from ryot_ray.model.quantize import straight_through
from ryot_ray.model.steps import DEFAULT_STEPS, Steps
from ryot_ray.model.widths import checked_widths, kept_activations


class TopK(nn.Module):
    """Keep the k largest |h| of each token, zero the rest. The gradient passes to every
    activation (straight-through), so the dropped ones can still grow into the top k."""

    def __init__(self, sparse_k: float):
        super().__init__()
        self.sparse_k = sparse_k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        kept = h.detach().abs().topk(kept_activations(self.sparse_k, h.shape[-1]), dim=-1).indices
        mask = torch.zeros_like(h, dtype=torch.bool).scatter_(-1, kept, True)
        return straight_through(h, h * mask)

    def extra_repr(self) -> str:
        return f"sparse_k={self.sparse_k}"


@dataclass(frozen=True)
class Gating:
    """act(gate) · up and its gradients, by `transformers`' name of act."""

    name: str
    forward: Callable  # (gate, up, steps) -> act(gate) · up
    backward: Callable  # (grad, gate, up, steps) -> (grad_gate, grad_up)


def _relu2_mul(gate, up, steps):
    return torch.relu(gate).square_().mul_(up)


def _relu2_mul_backward(grad, gate, up, steps):
    relu = torch.relu(gate)
    return grad * up * relu * 2, grad * relu.square()


GATINGS = {gating.name: gating for gating in (
    Gating("silu", lambda gate, up, steps: steps.silu_mul(gate, up),
           lambda grad, gate, up, steps: steps.silu_mul_backward(grad, gate, up)),
    Gating("relu2", _relu2_mul, _relu2_mul_backward),
)}


class GateMul(torch.autograd.Function):
    """The FFN's act(gate) · up, keeping its two inputs (not autograd's three tensors) the
    way the saved-activation knob says: fp32 for `none`, int8 codes for `int8` and `binary`."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, gate, up, gating, keeper, steps):
        if any(ctx.needs_input_grad):  # nothing is kept under no_grad (evaluation)
            kept_gate = keeper.keep(gate, steps)
            ctx.gating, ctx.keeper, ctx.steps, ctx.count = gating, keeper, steps, len(kept_gate)
            ctx.save_for_backward(*kept_gate, *keeper.keep(up, steps))
        return gating.forward(gate, up, steps)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        gate = ctx.keeper.restore(saved[: ctx.count], ctx.steps)
        up = ctx.keeper.restore(saved[ctx.count:], ctx.steps)
        return *ctx.gating.backward(grad, gate, up, ctx.steps), None, None, None


class KeptGate(nn.Module):
    """act(gate) · up, keeping its inputs for backward as `activation_compression` says."""

    def __init__(self, gating: Gating, activation_compression: str, steps: Steps = DEFAULT_STEPS):
        super().__init__()
        self.gating, self.keeper, self.steps = gating, SAVERS[activation_compression].ffn_keeper, steps
        self.activation_compression = activation_compression

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return GateMul.apply(gate, up, self.gating, self.keeper, self.steps)

    def extra_repr(self) -> str:
        return f"{self.gating.name}, saved activations: {self.activation_compression}, {self.steps.name} steps"


class ActivationGate(nn.Module):
    """act(gate) · up for another activation (a pretrained model's), in autograd: it keeps
    fp32 tensors whatever the saved-activation knob says."""

    def __init__(self, act_fn: nn.Module):
        super().__init__()
        self.act_fn = act_fn

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.act_fn(gate) * up


class MatryoshkaMLP(nn.Module):
    """A Llama (or BitNet) MLP run at `self.width` of its nested widths. The BitNet MLP
    norms act(gate) · up before down_proj (`ffn_sub_norm`, over the width in use)."""

    def __init__(self, mlp: nn.Module, widths: list[int], sparsity: nn.Module, activation: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.activation = activation  # act(gate) · up
        self.ffn_sub_norm = getattr(mlp, "ffn_sub_norm", nn.Identity())
        self.widths = widths
        self.width = widths[0]
        self.sparsity = sparsity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.gate_proj(x, rows=self.width), self.up_proj(x, rows=self.width))
        return self.down_proj(self.sparsity(self.ffn_sub_norm(h)))

    def extra_repr(self) -> str:
        return f"widths={self.widths}, width={self.width}"


def to_matryoshka(model: nn.Module, depth: int, sparse_k: float, activation_compression: str) -> nn.Module:
    """Wrap every decoder MLP; the checkpoint keys stay those of the architecture's MLP."""
    gating = GATINGS.get(model.config.hidden_act)
    for layer in model.model.layers:
        widths = checked_widths(layer.mlp.down_proj.in_features, depth, sparse_k)
        sparsity = TopK(sparse_k) if sparse_k != 1 else nn.Identity()
        activation = KeptGate(gating, activation_compression) if gating else ActivationGate(layer.mlp.act_fn)
        layer.mlp = MatryoshkaMLP(layer.mlp, widths, sparsity, activation)
    return model


def ffn_levels(model: nn.Module) -> list[int]:
    """The widths the model's FFNs can run at, widest first ([] for a plain model)."""
    return next((m.widths for m in model.modules() if isinstance(m, MatryoshkaMLP)), [])


def use_width(model: nn.Module, level: int) -> None:
    """Run every FFN at its `level`-th width (0: full)."""
    for module in model.modules():
        if isinstance(module, MatryoshkaMLP):
            if not 0 <= level < len(module.widths):
                raise ValueError(f"width level {level}: the FFN has {len(module.widths)} nested widths")
            module.width = module.widths[level]


def sampled_level(seed: int, step: int, micro_batch: int, depth: int) -> int:
    """The width level a micro-batch trains: the same on every worker, reproducible."""
    return random.Random(f"{seed}:{step}:{micro_batch}").randrange(depth)
