"""Whole-model decode, side by side: the fp32 reference and the frozen ternary model
through the same native step, and `transformers` `generate()` (what users run today).

Speed does not depend on trained values, so the models carry random weights of the
preset's shapes (or the ternary ones come from a trained checkpoint). For each thread
count, in interleaved rounds (the order alternates):
- `reference`: the fp32 model frozen as fp32 rows, through the native step;
- `transformers`: the same fp32 model through `generate()`;
- `ternary`: the BitNet model frozen to packed 2-bit weights, fp32 embeddings and head;
- `ternary_int8_head`: the same with int8 embeddings and `lm_head` (lossy: `validate`
  measures its accuracy effect).
Each answers a prompt with forced-length decoding (TTFT, tokens/s, per-token latency
CV); TTFT is also timed at a long prompt; the native variants decode N paths of one
problem as one batch against one path. The bandwidth bound is the bytes one decode step
reads (weights and KV cache) over the read rate measured with the same threads, both
cores streaming disjoint memory at once. Where the time goes comes from a separate
instrumented pass (phase timers in the step), so it does not touch the headline figures.
Peak RSS is measured per variant in a fresh process: the native variants answer from
their frozen file alone (no torch in the process).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ryot_ray.config import ModelConfig
from ryot_ray.data.tasks import task_suite
from ryot_ray.data.tokenizer import build_char_tokenizer
from ryot_ray.infer.deployed import answer_with_file
from ryot_ray.infer.engine import Engine, SamplingConfig
from ryot_ray.infer.export import TERNARY_TYPES, ExportError, export_gguf
from ryot_ray.infer.freeze import freeze
from ryot_ray.infer.load import engine_path, native_engine
from ryot_ray.infer.model_file import FrozenModel
from ryot_ray.infer.speed import digit_prompt, engine_speed, transformers_speed, transformers_ttft
from ryot_ray.kernels.native import native_isas
from ryot_ray.kernels.ternary import read_bytes
from ryot_ray.machine import machine_facts
from ryot_ray.memory import in_fresh_process, peak_rss_mb
from ryot_ray.model.build import build_model
from ryot_ray.progress_bar import progress
from ryot_ray.stats import spread
from ryot_ray.train.checkpoint import load_checkpoint

VARIANTS = ("reference", "transformers", "ternary", "ternary_int8_head")
NATIVE = ("reference", "ternary", "ternary_int8_head")
TERNARY = ("ternary", "ternary_int8_head")
PEERS = ("reference", "transformers")
BANDWIDTH_BYTES = 512 * 2**20


def reference_model(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(preset=preset, quantization="none"), build_char_tokenizer()).eval()


def frozen_variants(preset: str, checkpoint: Path | None = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """The fp32 reference (a torch model, for generate()) and each native variant frozen."""
    tokenizer = build_char_tokenizer()
    reference = reference_model(preset, seed)
    if checkpoint is not None:
        bitnet, tokenizer = load_checkpoint(checkpoint)[:2]
    else:
        bitnet = build_model(ModelConfig(preset=preset, quantization="bitnet"), tokenizer)
    frozen = {"reference": freeze(reference, tokenizer),
              "ternary": freeze(bitnet, tokenizer),
              "ternary_int8_head": freeze(bitnet, tokenizer, int8_embeddings=True)}
    return reference, frozen


def decode_bytes(frozen: FrozenModel, context: int, kv_bytes: int = 4) -> int:
    """Bytes one decode step reads: every linear weight once (and the head), the
    embedding row, and the KV cache so far."""
    meta, arrays = frozen.model, frozen.arrays
    weights = sum(a.nbytes for name, a in arrays.items() if name.endswith((".data", ".scale", ".row_sums")))
    row = arrays["embed.weight"].nbytes // meta["vocab"]
    cache = 2 * meta["layers"] * meta["kv_heads"] * meta["head_dim"] * context * kv_bytes
    return weights + row + cache


def measured_bandwidth(threads: int, repeats: int = 5) -> float:
    """Bytes per second reading a buffer far larger than the caches (median), each thread
    streaming its own half at the same time."""
    buffer = torch.ones(BANDWIDTH_BYTES, dtype=torch.uint8)
    read_bytes(buffer, threads)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        read_bytes(buffer, threads)
        samples.append(BANDWIDTH_BYTES / (time.perf_counter() - start))
    return statistics.median(samples)


def _decode(name: str, engines: dict, reference: nn.Module, prompt: str, new_tokens: int):
    if name == "transformers":
        return transformers_speed(reference, build_char_tokenizer(), prompt, new_tokens)
    return engine_speed(engines[name], prompt, new_tokens)


def _ttft(name: str, engines: dict, reference: nn.Module, prompt: str) -> float:
    if name == "transformers":
        return transformers_ttft(reference, build_char_tokenizer(), prompt)
    return engines[name].generate([prompt], SamplingConfig(max_new_tokens=1, ignore_eos=True)).ttft_s


def path_step(engine: Engine, prompt: str, paths: int, new_tokens: int) -> float:
    """Median seconds of a decode step of `paths` paths of one prompt, as one batch."""
    generation = engine.generate_paths(prompt, paths, SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True))
    return statistics.median(generation.decode_step_s)


def time_split(engine: Engine, prompt_tokens: int, new_tokens: int) -> dict:
    """Milliseconds per decode token in each phase of the step (thread 0's clock), from a
    separate instrumented pass; `outside_step` is the rest of a generated token's time."""
    step = engine.model_step
    ids = list(range(3, 3 + prompt_tokens))
    step.step(ids, [0] * len(ids), list(range(len(ids))), [len(ids) - 1])
    step.profile(True)
    started = time.perf_counter()
    for i in range(new_tokens):
        step.step([5], [0], [len(ids) + i], [0])
    wall = time.perf_counter() - started
    phases = step.profile(False)
    split = {name: 1e3 * seconds / new_tokens for name, seconds in phases.items()}
    split["outside_phases"] = 1e3 * wall / new_tokens - sum(split.values())
    return split


def _generate_once(preset: str, prompt_tokens: int, new_tokens: int, threads: int) -> dict:
    """A fresh process running `generate()` on the fp32 reference (built here)."""
    torch.set_num_threads(threads)
    transformers_speed(reference_model(preset), build_char_tokenizer(), digit_prompt(prompt_tokens), new_tokens)
    return {"peak_rss_mb": peak_rss_mb(), "scope": "whole process", "torch_imported": True}


def deployed_rss(name: str, path: Path | None, preset: str, prompt_tokens: int, new_tokens: int,
                 threads: int) -> dict:
    """Peak RSS of a fresh process answering once with the variant."""
    if name == "transformers":
        return in_fresh_process(_generate_once, preset, prompt_tokens, new_tokens, threads, what=f"{name} memory")
    result = in_fresh_process(answer_with_file, str(path), [(digit_prompt(prompt_tokens), 1)], {}, new_tokens,
                              prompt_tokens + new_tokens + 1, threads, True, what=f"{name} memory")
    return {k: v for k, v in result.items() if k != "answers"}


def llama_cpp(binary: Path, models: list[Path], threads: list[int], prompt_tokens: int, new_tokens: int,
              rounds: int) -> list[dict]:
    """llama.cpp's own benchmark (`llama-bench`) on GGUF files of the same shapes: prefill
    and decode as separate runs, so one that fails (its error kept) costs only itself."""
    rows = []
    for model in models:
        for test, prompt, generated in (("prefill", prompt_tokens, 0), ("decode", 0, new_tokens)):
            command = [str(binary), "-m", str(model), "-t", ",".join(map(str, threads)), "-p", str(prompt),
                       "-n", str(generated), "-r", str(rounds), "-o", "json"]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                rows.append({"model": model.name, "test": test, "error": f"llama-bench exited with {run.returncode}",
                             "stderr": run.stderr[-500:]})
                continue
            for entry in json.loads(run.stdout):
                rows.append({"model": model.name, "threads": entry["n_threads"], "test": test,
                             "tokens_per_s": entry["avg_ts"], "stdev": entry.get("stddev_ts"),
                             "type": entry.get("model_type", "")})
    return rows


def exported_ternary(checkpoint: Path, directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The checkpoint as a GGUF file in each ternary format (refused before any timing if
    llama.cpp cannot run it), and a test prompt of each task and level it was trained on."""
    model, tokenizer, config, _ = load_checkpoint(checkpoint)
    files = {}
    for weight_type in TERNARY_TYPES:
        files[weight_type] = directory / f"{checkpoint.name}-{weight_type}.gguf"
        export_gguf(model, tokenizer, files[weight_type], weight_type)
    data = config.data
    return files, [p.prompt for p in task_suite(data.families, data.difficulties, "test", 1, config.seed)]


def llama_cpp_answer(simple: Path, model: Path, prompt: str, new_tokens: int) -> str:
    """llama.cpp's greedy answer (`llama-simple`, which prints the prompt, then each piece)."""
    run = subprocess.run([str(simple), "-m", str(model), "-n", str(new_tokens), prompt], capture_output=True,
                         text=True, errors="replace")
    if run.returncode != 0:
        raise RuntimeError(f"llama-simple exited with {run.returncode}")
    printed = run.stdout.removesuffix("\n")
    if prompt not in printed:  # it drops characters its vocabulary lacks; ours reads them as <unk>
        raise RuntimeError("llama-simple printed another prompt than it was given")
    return printed.split(prompt, 1)[1]


def greedy_agreement(simple: Path, files: dict[str, Path], frozen: FrozenModel, prompts: list[str],
                     new_tokens: int) -> list[dict]:
    """Per exported file and prompt: llama.cpp's greedy answer beside the native step's on
    the same ternary model, and how many of their first tokens (characters) agree; a run
    that fails keeps its error and costs only itself."""
    engine = native_engine(frozen, 1, max(map(len, prompts)) + new_tokens + 2, torch.get_num_threads())
    ours = {p: engine.generate([p], SamplingConfig(max_new_tokens=new_tokens)).texts[0] for p in prompts}
    engine.model_step.close()
    rows = []
    for weight_type, path in files.items():
        for prompt in prompts:
            row = {"type": weight_type, "prompt": prompt, "ryot_ray": ours[prompt]}
            try:
                theirs = llama_cpp_answer(simple, path, prompt, new_tokens)
            except (OSError, RuntimeError) as error:
                rows.append(row | {"error": str(error)})
                continue
            agreed = next((i for i, (a, b) in enumerate(zip(ours[prompt], theirs)) if a != b),
                          min(len(ours[prompt]), len(theirs)))
            rows.append(row | {"llama_cpp": theirs, "same": ours[prompt] == theirs, "leading_tokens_agreed": agreed})
    return rows


def bench_threads(threads: int, reference: nn.Module, frozen: dict, files: dict, preset: str, rounds: int,
                  prompt_tokens: int, new_tokens: int, ttft_prompt: int, paths: int, memory: bool) -> dict:
    torch.set_num_threads(threads)
    max_length = max(prompt_tokens, ttft_prompt) + new_tokens + 1
    engines = {name: native_engine(frozen[name], paths, max_length, threads) for name in NATIVE}
    prompt, long_prompt = digit_prompt(prompt_tokens), digit_prompt(ttft_prompt)
    for name in VARIANTS:  # warm-up
        _decode(name, engines, reference, prompt, 4)
    ttft, long_ttft, rate, steps = ({name: [] for name in VARIANTS} for _ in range(4))
    one, many = {name: [] for name in NATIVE}, {name: [] for name in NATIVE}
    for round_ in progress(range(rounds), f"decode rounds at {threads} thread(s)"):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for name in order:
            first, tokens_per_s, per_token = _decode(name, engines, reference, prompt, new_tokens)
            ttft[name].append(1e3 * first)
            rate[name].append(tokens_per_s)
            steps[name] += per_token
        for name in order:
            long_ttft[name].append(1e3 * _ttft(name, engines, reference, long_prompt))
        for name in (n for n in order if n in NATIVE):
            one[name].append(path_step(engines[name], prompt, 1, new_tokens))
            many[name].append(path_step(engines[name], prompt, paths, new_tokens))
    bandwidth = measured_bandwidth(threads)
    context = prompt_tokens + new_tokens // 2
    result = {"threads": threads, "measured_read_bandwidth_gb_s": bandwidth / 1e9, "variants": {}}
    for name in VARIANTS:
        bytes_per_token = decode_bytes(frozen["reference" if name == "transformers" else name], context)
        bound = bandwidth / bytes_per_token
        entry = {
            "ttft_ms": spread(ttft[name]),
            f"ttft_ms_at_{ttft_prompt}_tokens": spread(long_ttft[name]),
            "decode_tokens_per_s": spread(rate[name]),
            # generate() gives no per-token times: its CV would only be a spread of rounds
            "per_token_latency_cv": (None if name == "transformers"
                                     else statistics.pstdev(steps[name]) / statistics.fmean(steps[name])),
            "bytes_read_per_token": bytes_per_token,
            "bandwidth_bound_tokens_per_s": bound,
            "fraction_of_bound": statistics.median(rate[name]) / bound,
        }
        if name in NATIVE:
            entry[f"step_{paths}_paths_vs_1"] = spread([m / o for m, o in zip(many[name], one[name])])
            entry["time_split_ms_per_token"] = time_split(engines[name], prompt_tokens, new_tokens)
        result["variants"][name] = entry
    result["speedups"] = {
        f"{name} vs {peer}": {
            "decode": spread([t / r for t, r in zip(rate[name], rate[peer])]),
            f"ttft_at_{ttft_prompt}_tokens": spread([r / t for t, r in zip(long_ttft[name], long_ttft[peer])]),
        } for name in TERNARY for peer in PEERS}
    for engine in engines.values():
        engine.model_step.close()
    if memory:
        for name in VARIANTS:
            result["variants"][name]["memory"] = deployed_rss(name, files.get(name), preset, prompt_tokens,
                                                              new_tokens, threads)
        reference_rss = result["variants"]["reference"]["memory"]["peak_rss_mb"]
        result["rss_fraction_of_reference"] = {
            name: result["variants"][name]["memory"]["peak_rss_mb"] / reference_rss for name in TERNARY}
    return result


def bench_decode(preset: str = "small", rounds: int = 3, prompt_tokens: int = 32, new_tokens: int = 64,
                 threads: list[int] | None = None, memory: bool = True, ttft_prompt: int = 128, paths: int = 4,
                 checkpoint: Path | None = None, llama_bench: Path | None = None,
                 gguf: list[Path] = ()) -> dict:
    if engine_path().name != "native":
        raise RuntimeError(f"bench decode measures the native step, which cannot run here: {engine_path().reason}")
    threads = threads or [torch.get_num_threads()]
    reference, frozen = frozen_variants(preset, checkpoint)
    result = {"benchmark": "decode", "preset": preset, "checkpoint": str(checkpoint) if checkpoint else None,
              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "ttft_prompt_tokens": ttft_prompt,
              "paths": paths, "rounds": rounds, "engine_path": vars(engine_path()), "native_isas": native_isas(),
              "weights": "trained checkpoint (ternary variants)" if checkpoint else "random", "by_threads": []}
    with tempfile.TemporaryDirectory(prefix="ryot-decode-") as directory:
        exported, prompts = {}, []
        if checkpoint and llama_bench:
            try:
                exported, prompts = exported_ternary(checkpoint, Path(directory))
            except ExportError as error:
                if not gguf:  # nothing else for llama-bench to run
                    raise
                result["llama_cpp_export"] = f"not exported: {error}"
        files = {}
        if memory:
            for name in NATIVE:
                files[name] = Path(directory) / f"{name}.ryot"
                frozen[name].save(files[name])
        for count in threads:
            result["by_threads"].append(bench_threads(count, reference, frozen, files, preset, rounds,
                                                      prompt_tokens, new_tokens, ttft_prompt, paths, memory))
        if llama_bench is not None:
            result["llama_cpp"] = llama_cpp(llama_bench, [*gguf, *exported.values()], threads, prompt_tokens,
                                            new_tokens, rounds)
        if exported:
            result["greedy_agreement"] = greedy_agreement(llama_bench.with_name("llama-simple"), exported,
                                                          frozen["ternary"], prompts, new_tokens)
    result["machine"] = machine_facts()
    return result


def table(result: dict) -> str:
    lines = [f"decode, preset {result['preset']} ({result['weights']} weights), prompt {result['prompt_tokens']} "
             f"tokens, {result['new_tokens']} new tokens, {result['rounds']} interleaved rounds; "
             f"{result['engine_path']['name']} step on {result['engine_path']['isa']}; "
             f"CPU {result['machine']['cpu']['model']}"]
    ttft_key = f"ttft_ms_at_{result['ttft_prompt_tokens']}_tokens"
    paths_key = f"step_{result['paths']}_paths_vs_1"
    for run in result["by_threads"]:
        lines += ["", f"{run['threads']} thread(s), read bandwidth {run['measured_read_bandwidth_gb_s']:.1f} GB/s",
                  f"{'variant':<18}{'TTFT ms':>9}{'TTFT@' + str(result['ttft_prompt_tokens']):>10}{'tok/s min':>11}"
                  f"{'median':>9}{'max':>9}{'CV':>7}{'bound':>9}{'of bound':>10}{str(result['paths']) + ' paths':>9}"
                  f"{'peak RSS MB':>13}"]
        for name, v in run["variants"].items():
            rate = v["decode_tokens_per_s"]
            cv = "-" if v["per_token_latency_cv"] is None else f"{v['per_token_latency_cv']:.3f}"
            step = f"{v[paths_key]['median']:.2f}x" if paths_key in v else "-"
            rss = f"{v['memory']['peak_rss_mb']:.0f}" if "memory" in v else "-"
            lines.append(f"{name:<18}{v['ttft_ms']['median']:>9.1f}{v[ttft_key]['median']:>10.1f}{rate['min']:>11.1f}"
                         f"{rate['median']:>9.1f}{rate['max']:>9.1f}{cv:>7}{v['bandwidth_bound_tokens_per_s']:>9.1f}"
                         f"{100 * v['fraction_of_bound']:>9.0f}%{step:>9}{rss:>13}")
        for pair, s in run["speedups"].items():
            decode, ttft = s["decode"], s[f"ttft_at_{result['ttft_prompt_tokens']}_tokens"]
            lines.append(f"{pair}: {decode['median']:.2f}x decode tokens/s (min {decode['min']:.2f}, max "
                         f"{decode['max']:.2f}); {ttft['median']:.2f}x TTFT at {result['ttft_prompt_tokens']} tokens")
        for name, v in run["variants"].items():
            if "time_split_ms_per_token" in v:
                split = v["time_split_ms_per_token"]
                lines.append(f"{name} ms per decode token: " + ", ".join(f"{k} {ms:.3f}" for k, ms in split.items()))
        for name, fraction in run.get("rss_fraction_of_reference", {}).items():
            lines.append(f"{name} peak RSS / reference peak RSS: {fraction:.3f}")
    if "llama_cpp" in result:
        lines += ["", "llama.cpp (llama-bench, same machine, run just after):"]
        if "llama_cpp_export" in result:
            lines.append(f"  the checkpoint: {result['llama_cpp_export']}")
        for row in result["llama_cpp"]:
            if "error" in row:
                lines.append(f"  {row['model']:<24} {row['test']:<8} failed: {row['error']}")
            else:
                lines.append(f"  {row['model']:<24} {row['threads']} thread(s) {row['test']:<8} "
                             f"{row['tokens_per_s']:.1f} tokens/s")
    if "greedy_agreement" in result:
        lines += ["", "greedy answers, llama.cpp (llama-simple) on the exported checkpoint vs the native step:"]
        for row in result["greedy_agreement"]:
            if "error" in row:
                lines.append(f"  {row['type']:<6} {row['prompt']!r}: failed: {row['error']}")
                continue
            verdict = "same" if row["same"] else f"first {row['leading_tokens_agreed']} tokens agree"
            lines.append(f"  {row['type']:<6} {row['prompt']!r}: {verdict} (ryot-ray {row['ryot_ray']!r}, "
                         f"llama.cpp {row['llama_cpp']!r})")
    return "\n".join(lines)
