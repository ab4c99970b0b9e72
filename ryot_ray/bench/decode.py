"""Whole-model decode, side by side: fp32 reference vs frozen ternary, and HF generate().

Speed does not depend on trained values, so the models carry random weights of the
preset's shapes. Four variants answer the same prompt in interleaved rounds:
- `reference`: the fp32 model through our engine;
- `transformers`: the same fp32 model through `transformers` `generate()`;
- `ternary`: the BitNet model frozen to packed 2-bit weights, through our engine;
- `ternary_int8_head`: the same, with int8 embeddings and `lm_head` (lossy: its
  accuracy effect is measured by `ryot-ray validate`, not here).
Peak RSS is measured per variant in a fresh process, from after the model is built to
the end of one answer. The bandwidth bound is the bytes one decode step reads (weights and KV cache) divided by
the measured read bandwidth of this machine.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ryot_ray.memory import in_fresh_process, peak_rss_mb, start_measuring
from ryot_ray.stats import spread
from ryot_ray.config import ModelConfig
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.infer.speed import engine_speed, transformers_speed
from ryot_ray.kernels.frozen import FrozenLinear, Int8Linear, freeze
from ryot_ray.kernels.ternary import kernel_path, native_isas, read_bytes
from ryot_ray.machine import machine_facts
from ryot_ray.model.build import build_model

VARIANTS = ("reference", "transformers", "ternary", "ternary_int8_head")
TERNARY = ("ternary", "ternary_int8_head")
BANDWIDTH_BYTES = 512 * 2**20


def build_variant(variant: str, preset: str, seed: int = 0) -> nn.Module:
    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    if variant in TERNARY:
        model = build_model(ModelConfig(preset=preset, quantization="bitnet"), tokenizer)
        return freeze(model, int8_embeddings=variant == "ternary_int8_head")
    return build_model(ModelConfig(preset=preset, quantization="none"), tokenizer).eval()


def decode_bytes(model: nn.Module, context: int) -> int:
    """Bytes one decode step reads: every linear weight once, plus the KV cache so far."""
    total = 0
    for module in model.modules():
        if isinstance(module, FrozenLinear):
            total += module.packed.data.nbytes
        elif isinstance(module, Int8Linear):
            total += module.codes.nbytes + module.scale.nbytes
        elif isinstance(module, nn.Linear):
            total += module.weight.nbytes
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    total += 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * context * 4
    return total


def measured_bandwidth(threads: int, repeats: int = 5) -> float:
    """Bytes per second reading a buffer far larger than the caches (median)."""
    buffer = torch.ones(BANDWIDTH_BYTES, dtype=torch.uint8)
    read_bytes(buffer, threads)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        read_bytes(buffer, threads)
        samples.append(BANDWIDTH_BYTES / (time.perf_counter() - start))
    return statistics.median(samples)


def digit_prompt(tokens: int) -> str:
    return ("0123456789 " * tokens)[: tokens - 1]  # the tokenizer adds BOS


def _run(variant: str, model: nn.Module, engine: Engine, prompt: str, new_tokens: int) -> tuple[float, float, list[float]]:
    """(TTFT s, decode tokens/s, per-token seconds) for one answer."""
    if variant == "transformers":
        return transformers_speed(model, engine.tokenizer, prompt, new_tokens)
    return engine_speed(engine, prompt, new_tokens)


def time_split(engine: Engine, prompt: str, new_tokens: int) -> dict:
    """Per decode token: ms inside the linear layers (kernels) and ms outside them
    (attention, norms, embedding and the Python around it), from one instrumented answer."""
    inside = [0.0]
    started: dict[int, float] = {}

    def before(module, args):
        started[id(module)] = time.perf_counter()

    def after(module, args, output):
        inside[0] += time.perf_counter() - started.pop(id(module))

    linears = [m for m in engine.model.modules() if isinstance(m, (nn.Linear, FrozenLinear, Int8Linear))]
    handles = [h for m in linears for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        engine.generate([prompt], SamplingConfig(max_new_tokens=1, ignore_eos=True))  # warm-up
        inside[0] = 0.0
        engine.generate([prompt], SamplingConfig(max_new_tokens=1, ignore_eos=True))  # prefill only
        prefill = inside[0]
        inside[0] = 0.0
        generation = engine.generate([prompt], SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True))
    finally:
        for handle in handles:
            handle.remove()
    steps = len(generation.decode_step_s)
    linear_ms = 1e3 * (inside[0] - prefill) / steps
    step_ms = 1e3 * sum(generation.decode_step_s) / steps
    return {"linear_ms_per_token": linear_ms, "outside_linears_ms_per_token": step_ms - linear_ms}


def _answer_once(variant: str, preset: str, prompt_tokens: int, new_tokens: int, threads: int) -> tuple[float, bool]:
    torch.set_num_threads(threads)
    model = build_variant(variant, preset)
    engine = Engine(model, build_char_tokenizer(), max_length=prompt_tokens + new_tokens + 1)
    answering_only = start_measuring()
    _run(variant, model, engine, digit_prompt(prompt_tokens), new_tokens)
    return peak_rss_mb(), answering_only


def peak_rss(variant: str, preset: str, prompt_tokens: int, new_tokens: int, threads: int) -> tuple[float, bool]:
    """(peak RSS in MB, whether it covers answering only) of a fresh process that builds
    `variant` and answers once."""
    return in_fresh_process(_answer_once, variant, preset, prompt_tokens, new_tokens, threads,
                            what=f"{variant} {preset} memory")


def bench_decode(preset: str = "small", rounds: int = 3, prompt_tokens: int = 32, new_tokens: int = 32,
                 threads: int | None = None, memory: bool = True) -> dict:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tokenizer = build_char_tokenizer()
    reference = build_variant("reference", preset)
    models = {"reference": reference, "transformers": reference}
    models |= {name: build_variant(name, preset) for name in TERNARY}
    engines = {name: Engine(model, tokenizer, max_length=prompt_tokens + new_tokens + 1)
               for name, model in models.items()}
    prompt = digit_prompt(prompt_tokens)
    for name in VARIANTS:
        _run(name, models[name], engines[name], prompt, 4)  # warm-up
    ttft: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rate: dict[str, list[float]] = {name: [] for name in VARIANTS}
    steps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(rounds):
        for name in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
            first, tokens_per_s, per_token = _run(name, models[name], engines[name], prompt, new_tokens)
            ttft[name].append(first)
            rate[name].append(tokens_per_s)
            steps[name] += per_token
    bandwidth = measured_bandwidth(threads)
    context = prompt_tokens + new_tokens // 2
    result = {
        "benchmark": "decode",
        "preset": preset,
        "threads": threads,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "kernel_path": vars(kernel_path()),
        "measured_read_bandwidth_gb_s": bandwidth / 1e9,
        "variants": {},
    }
    for name in VARIANTS:
        step_mean = statistics.fmean(steps[name])
        bytes_per_token = decode_bytes(models[name], context)
        bound = bandwidth / bytes_per_token
        result["variants"][name] = {
            "ttft_ms": spread([1e3 * t for t in ttft[name]]),
            "decode_tokens_per_s": spread(rate[name]),
            # generate() gives no per-token times: its CV would only be a spread of rounds
            "per_token_latency_cv": None if name == "transformers" else statistics.pstdev(steps[name]) / step_mean,
            "bytes_read_per_token": bytes_per_token,
            "bandwidth_bound_tokens_per_s": bound,
            "fraction_of_bound": statistics.median(rate[name]) / bound,
        }
        if name != "transformers":
            result["variants"][name]["time_split"] = time_split(engines[name], prompt, new_tokens)
        if memory:
            peak, answering_only = peak_rss(name, preset, prompt_tokens, new_tokens, threads)
            result["variants"][name]["peak_rss_mb"] = peak
            result["variants"][name]["peak_rss_scope"] = "answering" if answering_only else "whole process"
    result["speedups"] = {f"{name} vs {peer}": spread([t / r for t, r in zip(rate[name], rate[peer])])
                          for name in TERNARY for peer in ("reference", "transformers")}
    if memory:
        reference_rss = result["variants"]["reference"]["peak_rss_mb"]
        result["rss_fraction_of_reference"] = {
            name: result["variants"][name]["peak_rss_mb"] / reference_rss for name in TERNARY}
    result["machine"] = machine_facts()
    result["native_isas"] = native_isas()
    return result


def table(result: dict) -> str:
    lines = [f"decode, preset {result['preset']}, {result['threads']} thread(s), prompt {result['prompt_tokens']} "
             f"tokens, {result['new_tokens']} new tokens, {result['rounds']} interleaved rounds; read bandwidth "
             f"{result['measured_read_bandwidth_gb_s']:.1f} GB/s; ternary path {result['kernel_path']['name']} "
             f"{result['kernel_path']['isa']}",
             f"{'variant':<18}{'TTFT ms':>10}{'tok/s min':>11}{'median':>9}{'max':>9}{'CV':>7}"
             f"{'bound tok/s':>13}{'of bound':>10}{'peak RSS MB':>13}"]
    for name, v in result["variants"].items():
        rate = v["decode_tokens_per_s"]
        rss = f"{v['peak_rss_mb']:>13.0f}" if "peak_rss_mb" in v else f"{'-':>13}"
        cv = f"{'-':>7}" if v["per_token_latency_cv"] is None else f"{v['per_token_latency_cv']:>7.2f}"
        lines.append(f"{name:<18}{v['ttft_ms']['median']:>10.1f}{rate['min']:>11.1f}{rate['median']:>9.1f}"
                     f"{rate['max']:>9.1f}{cv}{v['bandwidth_bound_tokens_per_s']:>13.1f}"
                     f"{100 * v['fraction_of_bound']:>9.0f}%{rss}")
    for pair, s in result["speedups"].items():
        lines.append(f"{pair}: {s['median']:.2f}x decode tokens/s (min {s['min']:.2f}, max {s['max']:.2f})")
    for name, v in result["variants"].items():
        if "time_split" in v:
            lines.append(f"{name} per decode token: {v['time_split']['linear_ms_per_token']:.2f} ms in linear "
                         f"layers, {v['time_split']['outside_linears_ms_per_token']:.2f} ms outside them "
                         "(attention, norms, Python)")
    for name, fraction in result.get("rss_fraction_of_reference", {}).items():
        lines.append(f"{name} peak RSS / reference peak RSS: {fraction:.2f}")
    return "\n".join(lines)
