"""What the compression knobs buy, measured side by side.

- Training memory: the fp32 reference and BitNet with each saved-activation mode take
  the same training steps, each in a fresh process (peaks are per process), in
  alternating order over rounds. Two figures per variant: the peak RSS of the steps
  and the peak of the tensors autograd holds for backward (the activations, without the
  process's fixed costs), plus the gradient error of each mode against the reference
  model in plain autograd (fake-quantized BitLinears, Llama norms, torch's SiLU gate).
- Sparse down-projection (decode, 1b shapes): the dense ternary kernel against the
  sparse one keeping a quarter (and a half) of the activations, interleaved, weights
  cycled through DRAM.
- Matryoshka decode: a frozen `1b` model with two nested widths answers the same prompt
  at full and at half FFN width, interleaved, through the native step.
"""

from __future__ import annotations

import contextlib
import random
import statistics

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ryot_ray.bench import sequence_text
from ryot_ray.infer.speed import digit_prompt
from ryot_ray.memory import in_fresh_process, peak_rss_mb, start_measuring, training_allocator_env
from ryot_ray.progress_bar import progress
from ryot_ray.stats import spread
from ryot_ray.config import Config, ModelConfig
from ryot_ray.data.examples import sampled_batches
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.infer.freeze import freeze
from ryot_ray.infer.load import engine_path, native_engine
from ryot_ray.kernels.autotune import copies_to_fill, time_interleaved
from ryot_ray.kernels.pack import pack_ternary, pack_ternary_columns
from ryot_ray.kernels.ternary import kernel_path, native_isas, native_linear, native_sparse_linear
from ryot_ray.machine import machine_facts
from ryot_ray.model.bitlinear import BitLinear
from ryot_ray.model.build import PRESETS, build_model
from ryot_ray.model.compression import BACKWARD_DTYPE
from ryot_ray.model.matryoshka import ActivationGate, KeptGate
from ryot_ray.model.norm import FusedRMSNorm
from ryot_ray.train.loop import build_optimizer

MEMORY_VARIANTS = ("reference", "bitnet_none", "bitnet_int8", "bitnet_binary")
KEEP_FRACTIONS = (0.25, 0.5)
CYCLE_BYTES = 256 * 2**20


def _variant_config(config: Config, variant: str) -> Config:
    config = Config.from_dict(config.to_dict())
    if variant == "reference":
        config.model.quantization, config.model.mrl_depth, config.model.sparse_k = "none", 1, 1.0
        config.model.activation_compression = "none"
    else:
        config.model.quantization = "bitnet"
        config.model.activation_compression = variant.removeprefix("bitnet_")
    return config


class SavedTensors:
    """The bytes autograd holds for backward, at their peak (each storage counted once)."""

    def __init__(self):
        self.live: dict[int, int] = {}
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.live[storage.data_ptr()] = storage.nbytes()
        self.peak = max(self.peak, sum(self.live.values()))
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def _train_steps(config_dict: dict, variant: str, steps: int, threads: int,
                 sequence: int | None = None) -> tuple[float, float, bool]:
    """(peak RSS MB, peak saved-for-backward MB, peak reset) of `steps` training steps, in
    this process."""
    torch.set_num_threads(threads)
    config = _variant_config(Config.from_dict(config_dict), variant)
    batches = sampled_batches(config, build_char_tokenizer(), steps + 1, sequence)
    torch.manual_seed(config.seed)
    model = build_model(config.model, build_char_tokenizer()).train()
    optimizer = build_optimizer(model, config)

    def step(batch: dict, saved: SavedTensors | None = None) -> None:
        # what the forward keeps for backward (not what a backward recomputes and frees)
        with saved.hooks() if saved else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # the optimizer's state exists from here on, as in a real run
    reset = start_measuring()
    saved = SavedTensors()
    for batch in batches[1:]:
        saved.live.clear()
        step(batch, saved)
    return peak_rss_mb(), saved.peak / 2**20, reset


def _plain_autograd(model: nn.Module) -> nn.Module:
    """The BitNet model as plain autograd computes it: fake-quantized BitLinears, the Llama
    RMSNorms, act(gate) · up in torch operations; the same weights."""
    for module in list(model.modules()):
        if isinstance(module, BitLinear):
            module.quantized_linear = module.reference
        for name, child in list(module.named_children()):
            if isinstance(child, FusedRMSNorm):
                norm = LlamaRMSNorm(child.weight.shape[0], child.variance_epsilon)
                norm.weight = child.weight
                setattr(module, name, norm)
            elif isinstance(child, KeptGate):
                setattr(module, name, ActivationGate(ACT2FN[child.gating.name]))
    return model


def gradient_errors(config: Config, sequence: int | None = None) -> dict[str, float]:
    """Relative L2 error of all gradients of the fused training step (each saved-activation
    mode, the machine's backward precision, the native steps where they run) against the
    same model in plain autograd (`_plain_autograd`), on the same weights and batch."""
    batch = sampled_batches(config, build_char_tokenizer(), 1, sequence)[0]
    gradients = {}
    for mode in ("reference", "none", "int8", "binary"):
        torch.manual_seed(config.seed)
        model = build_model(_variant_config(config, f"bitnet_{'none' if mode == 'reference' else mode}").model,
                            build_char_tokenizer())
        if mode == "reference":
            _plain_autograd(model)
        model(**batch).loss.backward()
        gradients[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    exact = gradients["reference"]
    return {mode: float((gradients[mode] - exact).norm() / exact.norm()) for mode in ("none", "int8", "binary")}


def training_memory(config: Config, rounds: int = 3, steps: int = 2, threads: int = 1,
                    variants: tuple[str, ...] = MEMORY_VARIANTS, sequence: int | None = None) -> dict:
    """`sequence`: rows of that many tokens packed from the examples (None: the examples
    as they are). Each variant's process gets the allocator settings a training worker
    gets (`training_allocator_env`)."""
    if variants[0] != "reference":
        raise ValueError("the reference comes first: every variant is compared with it")
    errors = gradient_errors(config, sequence)  # first: a bad sequence fails here, not in a child
    rss: dict[str, list[float]] = {name: [] for name in variants}
    saved: dict[str, list[float]] = {name: [] for name in variants}
    resets = []
    allocator = training_allocator_env()
    for round_ in progress(range(rounds), "training memory rounds"):
        for name in variants if round_ % 2 == 0 else variants[::-1]:
            peak, held, reset = in_fresh_process(_train_steps, config.to_dict(), name, steps, threads, sequence,
                                                 what=f"{name} training memory", env=allocator)
            rss[name].append(peak)
            saved[name].append(held)
            resets.append(reset)
    reference = statistics.median(saved["reference"]), statistics.median(rss["reference"])
    return {
        "preset": config.model.preset,
        "batch_size": config.train.batch_size,
        "sequence": sequence,
        "steps": steps,
        # where the kernel refuses the reset (no /proc/self/clear_refs), the peak includes
        # building the model and the first step
        "peak_rss_covers": "the timed steps only" if all(resets) else "the whole process, setup included",
        "allocator_env": allocator,
        "variants": {
            name: {
                "peak_rss_mb": spread(rss[name]),
                "saved_for_backward_mb": spread(saved[name]),
                "saved_for_backward_vs_reference": statistics.median(saved[name]) / reference[0],
                "peak_rss_vs_reference": statistics.median(rss[name]) / reference[1],
            }
            for name in variants
        },
        "gradient_error_vs_plain_autograd": errors,
        "backward_dtype": str(BACKWARD_DTYPE).removeprefix("torch."),
    }


def sparse_down_projection(preset: str, rounds: int, threads: int, calls: int = 5,
                           cycle_bytes: int = CYCLE_BYTES) -> dict:
    """One decode token through the FFN down-projection: dense ternary vs sparse."""
    shape = PRESETS[preset]
    k, n = shape["intermediate_size"], shape["hidden_size"]
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    dense = pack_ternary(codes, 0.02, rows_per_tile=2)
    columns = pack_ternary_columns(codes, 0.02)
    paths = {"dense": ([pack_ternary(codes, 0.02, 2) for _ in range(copies_to_fill(dense.data.nbytes, cycle_bytes))],
                       lambda x, w: native_linear(x, w, threads=threads))}
    for fraction in KEEP_FRACTIONS:
        keep = max(1, round(fraction * k))
        copies = [pack_ternary_columns(codes, 0.02) for _ in range(copies_to_fill(columns.data.nbytes, cycle_bytes))]
        paths[f"sparse_{fraction:g}"] = (copies, lambda x, w, keep=keep: native_sparse_linear(x, w, keep, threads=threads))
    x = torch.randn(1, k)
    for copies, call in paths.values():
        call(x, copies[0])  # warm-up
    seconds = time_interleaved(paths, x, rounds, calls, random.Random(0))
    return {
        "k": k, "n": n,
        "microseconds": {name: spread([1e6 * v for v in values]) for name, values in seconds.items()},
        "speedup_vs_dense": {name: spread([d / v for d, v in zip(seconds["dense"], values)])
                             for name, values in seconds.items() if name != "dense"},
    }


def _tokens_per_s(engine: Engine, prompt: str, new_tokens: int) -> float:
    steps = engine.generate([prompt], SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)).decode_step_s
    return len(steps) / sum(steps)


def matryoshka_decode(preset: str, rounds: int, prompt_tokens: int = 32, new_tokens: int = 32) -> dict:
    """Decode tokens/s of one frozen model with two nested widths, at full and half width
    (int8 embeddings and lm_head at both widths)."""
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    frozen = freeze(build_model(ModelConfig(preset=preset, mrl_depth=2), tokenizer), tokenizer, int8_embeddings=True)
    engine = native_engine(frozen, 1, prompt_tokens + new_tokens + 1, torch.get_num_threads())
    prompt = digit_prompt(prompt_tokens)
    levels = {"full": 0, "half": 1}
    rates: dict[str, list[float]] = {name: [] for name in levels}
    for name, level in levels.items():
        engine.use_width(level)
        _tokens_per_s(engine, prompt, 4)  # warm-up
    for round_ in progress(range(rounds), "decode rounds"):
        for name in levels if round_ % 2 == 0 else list(levels)[::-1]:
            engine.use_width(levels[name])
            rates[name].append(_tokens_per_s(engine, prompt, new_tokens))
    return {
        "preset": preset,
        "widths": {name: frozen.model["widths"][level] for name, level in levels.items()},
        "decode_tokens_per_s": {name: spread(values) for name, values in rates.items()},
        "half_vs_full": spread([h / f for h, f in zip(rates["half"], rates["full"])]),
    }


def bench_compression(config: Config, preset: str = "1b", rounds: int = 3, threads: int | None = None,
                      sequence: int | None = None) -> dict:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    result = {
        "benchmark": "compression",
        "threads": threads,
        "rounds": rounds,
        "kernel_path": vars(kernel_path()),
        "training_memory": training_memory(config, rounds, threads=threads, sequence=sequence),
    }
    if native_isas():
        result["sparse_down_projection"] = sparse_down_projection(preset, rounds, threads)
    if engine_path().name == "native":
        result["matryoshka_decode"] = matryoshka_decode(preset, rounds)
    result["machine"] = machine_facts()
    return result


def table(result: dict) -> str:
    memory = result["training_memory"]
    lines = [f"training memory, preset {memory['preset']}, batch {memory['batch_size']}, "
             f"{sequence_text(memory['sequence'])}, {memory['steps']} steps "
             f"in a fresh process per variant, {result['rounds']} rounds; peak RSS covers "
             f"{memory['peak_rss_covers']}; allocator: "
             + (" ".join(f"{k}={v}" for k, v in memory["allocator_env"].items()) or "glibc's defaults (no huge pages)"),
             f"{'variant':<16}{'peak RSS MB':>12}{'vs ref':>8}{'saved for backward MB':>24}{'vs ref':>8}"]
    for name, v in memory["variants"].items():
        lines.append(f"{name:<16}{v['peak_rss_mb']['median']:>12.0f}{v['peak_rss_vs_reference']:>8.2f}"
                     f"{v['saved_for_backward_mb']['median']:>24.1f}{v['saved_for_backward_vs_reference']:>8.2f}")
    errors = memory["gradient_error_vs_plain_autograd"]
    lines.append(f"gradient error of the fused step ({memory['backward_dtype']} backward) against plain "
                 "autograd (relative L2, all parameters): "
                 + ", ".join(f"{mode} {error:.4f}" for mode, error in errors.items()))
    if "sparse_down_projection" in result:
        sparse = result["sparse_down_projection"]
        lines.append(f"FFN down-projection, one decode token, K={sparse['k']} -> N={sparse['n']}, "
                     "weights from DRAM (us, median [min, max]):")
        for name, v in sparse["microseconds"].items():
            ratio = sparse["speedup_vs_dense"].get(name)
            faster = f"  {ratio['median']:.2f}x dense [{ratio['min']:.2f}, {ratio['max']:.2f}]" if ratio else ""
            lines.append(f"  {name:<12}{v['median']:>9.1f} [{v['min']:.1f}, {v['max']:.1f}]{faster}")
    if "matryoshka_decode" not in result:
        return "\n".join(lines)
    mrl = result["matryoshka_decode"]
    rates = mrl["decode_tokens_per_s"]
    ratio = mrl["half_vs_full"]
    lines.append(f"Matryoshka decode, preset {mrl['preset']}: full width {mrl['widths']['full']} "
                 f"{rates['full']['median']:.1f} tokens/s, half width {mrl['widths']['half']} "
                 f"{rates['half']['median']:.1f} tokens/s: {ratio['median']:.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]")
    return "\n".join(lines)
