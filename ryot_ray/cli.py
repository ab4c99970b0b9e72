"""The `ryot-ray` command: parses arguments and wires the pipeline stages together."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ryot_ray.config import GGUF_TYPES, MODEL_PRESETS, ConfigError, ModelConfig, load_config


def _ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    parser.add_argument("--dashboard-host", default="127.0.0.1",
                        help="where a local cluster's dashboard listens (default: this machine only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ryot-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="one Ray Train run (BitNet or the fp32 reference)")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="run config YAML, e.g. configs/default.yaml")
    source.add_argument("--resume", metavar="EXPERIMENT", help="continue results/EXPERIMENT")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. train.lr=1e-3 (repeatable)")
    train.add_argument("--workers", type=int, help="Ray Train workers (CPU processes)")
    train.add_argument("--name", help="experiment name (default: the config's experiment and a timestamp)")
    train.add_argument("--results-dir", type=Path, default=Path("results"))
    _ray_options(train)

    tune = commands.add_parser("tune", help="the main job: ASHA over the adaptive space, then validate the best")
    start = tune.add_mutually_exclusive_group(required=True)
    start.add_argument("--space", type=Path, help="search space YAML, e.g. search_spaces/default.yaml")
    start.add_argument("--resume", metavar="EXPERIMENT", help="continue results/EXPERIMENT")
    tune.add_argument("--config", type=Path, help="run config every trial starts from (default: the space's)")
    tune.add_argument("--samples", type=int, help="trials to sample (default: the space's)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override the run config every trial and the reference start from, e.g. "
                      "model.architecture=bitnet")
    tune.add_argument("--name", help="experiment name (default: tune and a timestamp)")
    tune.add_argument("--phase1", type=Path, default=Path("configs/phase1_baselines.yaml"))
    tune.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the final validation's timings")
    tune.add_argument("--results-dir", type=Path, default=Path("results"))
    _ray_options(tune)

    bench = commands.add_parser("bench", help="measured speedups, side by side")
    benches = bench.add_subparsers(dest="what", required=True)
    train_bench = benches.add_parser("train", help="training tokens/s, BitNet vs the fp32 reference")
    train_bench.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    train_bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train_bench.add_argument("--steps", type=int, default=5, help="optimizer steps timed per round")
    kernels = benches.add_parser("kernels", help="linear kernels: fp32, bf16, torch int8, ternary")
    kernels.add_argument("--shapes", type=_shapes, default=None, metavar="KxN,...",
                         help="weight shapes (default: 2048x2048,2048x5632,5632x2048,4096x11008)")
    kernels.add_argument("--tokens", type=_integers, default=None, metavar="M,...",
                         help="tokens per call (default: 1,16,64,256)")
    kernels.add_argument("--calls", type=int, default=5, help="calls per path per round")
    kernels.add_argument("--rows-per-tile", type=int, default=2, help="16-row groups per kernel tile")
    kernels.add_argument("--tokens-per-tile", type=int, default=8, help="tokens per micro-tile when M > 1")
    kernels.add_argument("--autotune", action="store_true",
                         help="sweep the tiles per shape instead, and cache the best for this CPU")
    decode = benches.add_parser("decode", help="whole-model decode: fp32 reference, transformers, ternary")
    decode.add_argument("--size", choices=MODEL_PRESETS, default="small", help="model preset")
    decode.add_argument("--checkpoint", type=Path, help="a trained BitNet checkpoint for the ternary variants "
                        "(default: random weights of --size)")
    decode.add_argument("--prompt-tokens", type=int, default=32)
    decode.add_argument("--new-tokens", type=int, default=64)
    decode.add_argument("--ttft-prompt", type=int, default=128, help="prompt tokens of the long-prompt TTFT")
    decode.add_argument("--paths", type=int, default=4, help="paths decoded as one batch, against one path")
    decode.add_argument("--threads", type=_integers, metavar="T,...",
                        help="thread counts to measure at, e.g. 2,1 (default: this process's CPUs)")
    decode.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-RSS processes")
    decode.add_argument("--llama-bench", type=Path,
                        help="llama.cpp's llama-bench binary, to run beside ours on --gguf files and on the "
                        "--checkpoint exported as TQ2_0 and TQ1_0 (whose greedy answers llama-simple, beside "
                        "it, gives)")
    decode.add_argument("--gguf", type=Path, action="append", default=[],
                        help="a GGUF of the same shapes for --llama-bench (repeatable: TQ2_0, Q8_0, ...)")
    compression = benches.add_parser(
        "compression", help="training memory per saved-activation mode; sparse and Matryoshka decode")
    compression.add_argument("--config", type=Path, default=Path("configs/default.yaml"),
                             help="run config for the training-memory part")
    compression.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    compression.add_argument("--size", choices=MODEL_PRESETS, default="1b",
                             help="model preset of the decode parts")
    tune_bench = benches.add_parser("tune", help="ASHA vs every trial to max_t, same space and seeds")
    tune_bench.add_argument("--space", type=Path, default=Path("search_spaces/smoke.yaml"))
    tune_bench.add_argument("--samples", type=int, help="trials to sample (default: the space's)")
    tune_bench.add_argument("--repeats", type=int, default=1,
                            help="ASHA and FIFO searches each, in alternating order (default 1)")
    tune_bench.add_argument("--results-dir", type=Path, default=Path("results"))
    _ray_options(tune_bench)
    for parser_ in (train_bench, kernels, decode, compression):
        parser_.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
        parser_.add_argument("--results-dir", type=Path, default=Path("results"))
        if parser_ is not decode:
            parser_.add_argument("--threads", type=int, help="torch and kernel threads")
    for parser_ in (train_bench, compression):
        parser_.add_argument("--sequence", type=int, metavar="N",
                             help="train on rows of N tokens packed from the examples "
                                  "(default: the examples as they are, padded per batch)")

    validate = commands.add_parser(
        "validate", help="the optimized inference configuration against the reference, on a Ray actor")
    validate.add_argument("--checkpoint", type=Path, required=True, help="a trained BitNet checkpoint directory")
    validate.add_argument("--reference", type=Path,
                          help="the trained fp32 reference checkpoint (without it: speed only, no accuracy retention)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                          help="override the checkpoint's inference config, e.g. inference.rlvr_paths=4")
    validate.add_argument("--phase1", type=Path, default=Path("configs/phase1_baselines.yaml"))
    validate.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the speed timings")
    validate.add_argument("--max-problems", type=int, help="answer only the first N test problems")
    validate.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    validate.add_argument("--results-dir", type=Path, help="where the reports go (default: next to the checkpoint)")
    _ray_options(validate)

    generate = commands.add_parser("generate", help="answer your own prompts with a checkpoint")
    generate.add_argument("--checkpoint", type=Path, required=True)
    prompts = generate.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt in the task format, e.g. '12+34|' or 'rev abc|'")
    prompts.add_argument("--prompts", type=Path, help='a JSONL file, one {"prompt": ...} per line')
    generate.add_argument("--output", type=Path, help="JSONL answers (default: printed)")
    generate.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE")
    generate.add_argument("--max-new-tokens", type=int, default=64)

    freeze = commands.add_parser("freeze", help="write a BitNet checkpoint's frozen model file for the native engine")
    freeze.add_argument("--checkpoint", type=Path, required=True, help="a trained BitNet checkpoint directory")
    freeze.add_argument("--set", dest="overrides", action="append", default=[], metavar="inference.KEY=VALUE",
                        help="the layout, e.g. inference.int8_embeddings=true or inference.tile_size=4")

    imported = commands.add_parser("import", help="a transformers Llama or bitnet checkpoint as a ryot-ray one")
    imported.add_argument("--pretrained", required=True, help="a local directory, or a hub name (online)")
    imported.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint directory to write")

    export = commands.add_parser("export", help="a checkpoint as a GGUF file for llama.cpp (bitnet architecture)")
    export.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint directory")
    export.add_argument("--gguf", type=Path, required=True, help="the GGUF file to write")
    export.add_argument("--type", choices=GGUF_TYPES, help="the linears' format (default: tq2_0 for a BitNet "
                        "model, f16 for a full-precision one)")

    info = commands.add_parser("info", help="CPU features, versions and the Ray cluster")
    _ray_options(info)
    info.add_argument("--no-ray", action="store_true", help="skip connecting to Ray")
    return parser


def _train(args: argparse.Namespace) -> int:
    from ryot_ray.model.build import check_knobs
    from ryot_ray.train.experiment import experiment_dir, resume_config

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"train.workers={args.workers}")
    if args.resume:
        directory = experiment_dir(args.results_dir, args.resume, resume=True)
        config = resume_config(directory, overrides)
    else:
        config = load_config(args.config, overrides)
        check_knobs(config.model)
        name = args.name or f"{config.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        directory = experiment_dir(args.results_dir, name, resume=False)
    _check_memory(config, args.address)

    from ryot_ray.train.loop import DIVERGED, epoch_line
    from ryot_ray.train.run import run_training

    _connect(args, directory.name)
    print(f"experiment {directory.name}: {config.model.quantization} {config.model.preset}, "
          f"{config.train.workers} worker(s), {config.train.epochs} epoch(s) -> {directory}")
    outcome = run_training(config, directory)
    print("epochs of this experiment:")
    for epoch in outcome.report["epochs"]:
        print(f"  {epoch_line(epoch)}")
    test = outcome.report["test"]
    if test:
        by_family = ", ".join(f"{f} {a:.3f}" for f, a in test["test_accuracy_by_family"].items())
        print(f"test exact match {test['test_accuracy']:.3f} ({by_family})")
    restarts = outcome.report["worker_restarts"]
    if restarts:
        print(f"worker group restarted {len(restarts)} time(s) after a failure, from epoch(s) "
              f"{', '.join(str(r['epoch']) for r in restarts)}")
    print(f"report: {outcome.report_path}")
    if outcome.status == DIVERGED:
        last = outcome.report["epochs"][-1]
        print(f"training stopped at epoch {last['epoch']}, step {last['step']}: the loss is not finite; "
              f"last good checkpoint: {outcome.checkpoint or 'none'}", file=sys.stderr)
        return 1
    print(f"checkpoint: {outcome.checkpoint}")
    return 0


def _new_space(path: Path, config: Path | None, overrides: list[str], samples: int | None, address: str | None):
    """A search space checked as far as it can be before Ray starts."""
    from ryot_ray.model.build import check_knobs
    from ryot_ray.tune.space import load_space

    space = load_space(path, config, overrides)
    if samples is not None:
        if samples < 1:
            raise ConfigError("--samples must be at least 1")
        space.samples = samples
    check_knobs(space.base.model)
    _check_memory(space.base, address)
    model = space.base.model
    _check_deployment(space.base.validate.deploy_preset, "validate.deploy_preset", model)
    if space.speed_at != "model":
        _check_deployment(space.speed_at, f"{space.source}: speed_at", model, needs_native=True)
    return space


def _tune(args: argparse.Namespace) -> int:
    from ryot_ray.config import load_phase1
    from ryot_ray.train.experiment import CONFIG_FILE, experiment_dir
    from ryot_ray.tune.space import SPACE_FILE, load_space, save_space

    if args.resume:
        if args.config is not None or args.samples is not None or args.overrides:
            raise ConfigError("--resume continues an experiment as it was started; drop --config, --samples "
                              "and --set")
        directory = experiment_dir(args.results_dir, args.resume, resume=True)
        space = load_space(directory / SPACE_FILE, directory / CONFIG_FILE)
    else:
        space = _new_space(args.space, args.config, args.overrides, args.samples, args.address)
        directory = experiment_dir(args.results_dir, args.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                                   resume=False)
    targets = load_phase1(args.phase1)
    if args.repeats < 1:
        raise ConfigError("--repeats must be at least 1")

    from ryot_ray.report.tune import write_search_summary, write_tune_reports
    from ryot_ray.report.validation import write_reports
    from ryot_ray.tune.metrics import write_grafana_dashboard
    from ryot_ray.tune.summary import fallback_warning, interrupted, summarize
    from ryot_ray.tune.tuner import TUNE_RUN, SearchError, run_search, train_reference

    started = time.perf_counter()
    connection = _connect(args, directory.name)
    grafana = write_grafana_dashboard(directory, connection.session_dir if connection else None)
    if not args.resume:
        save_space(space, directory)
    print(f"experiment {directory.name}: {space.samples} trial(s) of {space.source} -> {directory}")
    measurement = _measurement(space)
    stopped = (f"search interrupted; continue it with: ryot-ray tune --resume {directory.name} "
               f"--results-dir {args.results_dir}")
    try:
        reference = train_reference(space, args.results_dir.resolve() / "references", measurement)
        print(f"reference {reference.config_hash} ({'trained now' if reference.trained_now else 'cached'}): "
              f"exact match {reference.accuracy:.3f} on {space.measure_problems} validation problems")
        results = run_search(space, directory, reference, measurement, resume=bool(args.resume))
        if interrupted(results, space.scheduler.max_t):
            raise KeyboardInterrupt
        summary = summarize(results, space, reference, time.perf_counter() - started)
    except SearchError as error:
        print(f"ryot-ray: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(stopped, file=sys.stderr)
        return 130
    write_search_summary(summary, directory)
    best = summary["best"]
    print(f"{len(summary['trials'])} trials, {summary['stopped_early']} stopped early by {space.scheduler.name}, "
          f"{summary['errored']} errored, {summary['diverged']} diverged; best {best['trial_id']}: objective "
          f"{best['objective']:.3f}, speedup {best['speedup']:.2f}x, accuracy {best['inference_accuracy']:.3f}")
    if warning := fallback_warning(summary["kernel_paths"]):
        print(f"ryot-ray: warning: {warning}", file=sys.stderr)
    report = _validate_on_actor(Path(best["checkpoint"]), reference.checkpoint, targets, {}, args.repeats, None, True,
                                space.base.validate.deploy_preset)
    written = write_reports(report, directory)
    written += write_tune_reports(summary, report, directory, time.perf_counter() - started)
    _print_validation(report, written)
    print(f"every trial's figures by epoch in TensorBoard (pip install tensorboard): "
          f"tensorboard --logdir {directory / TUNE_RUN}")
    print(f"and live in Grafana (with Prometheus scraping the cluster): {', '.join(map(str, grafana))}")
    return 0


def _connect(args: argparse.Namespace, job_name: str):
    """Join or start the run's Ray cluster, its job named `job_name`; show how to reach
    its dashboard."""
    from ryot_ray.cluster import connect, dashboard_lines

    connection = connect(args.address, args.dashboard_host, job_name)
    if connection and connection.dashboard:
        print(dashboard_lines(connection.dashboard))
    return connection


def _check_memory(config, address: str | None) -> None:
    """On an embedded cluster the whole run shares this machine's memory; refuse a model
    whose training cannot fit before anything starts."""
    import psutil

    from ryot_ray.cluster import embedded
    from ryot_ray.model.footprint import check_training_fits

    if embedded(address):
        check_training_fits(config, psutil.virtual_memory().total)


def _measurement(space):
    """Trials measured by the validation stage's functions, on the space's problems."""
    from functools import partial

    from ryot_ray.tune.tuner import Measurement
    from ryot_ray.validate.trial import TrialMeasurement, reference_accuracy

    return Measurement(TrialMeasurement(space.measure_problems, speed_at=space.speed_at),
                       partial(reference_accuracy, problems=space.measure_problems))


def _bench_tune(args: argparse.Namespace) -> int:
    space = _new_space(args.space, None, [], args.samples, args.address)
    if args.repeats < 1:
        raise ConfigError("--repeats must be at least 1")

    from ryot_ray.bench.tune import bench_tune, table
    from ryot_ray.cluster import connect
    from ryot_ray.atomic import write_json_atomic
    from ryot_ray.tune.tuner import SearchError

    connect(args.address, args.dashboard_host)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        result = bench_tune(space, (args.results_dir / "bench" / f"tune-{stamp}").resolve(),
                            args.results_dir.resolve() / "references", _measurement(space), args.repeats)
    except SearchError as error:
        print(f"ryot-ray: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted", file=sys.stderr)
        return 130
    path = args.results_dir / "bench" / f"tune-{stamp}.json"
    write_json_atomic(path, result)
    print(table(result))
    print(f"saved: {path}")
    return 0


def _check_deployment(shape: str | None, where: str, model: ModelConfig, needs_native: bool = False) -> None:
    """A deployment shape is known before Ray starts (a bad one is one line, exit 2), and
    so is a missing native step where nothing can stand in for it."""
    if shape:
        from ryot_ray.infer.load import engine_path
        from ryot_ray.validate.deployment import deployment_shape

        deployment_shape(shape, where, model)
        if needs_native and (path := engine_path()).name != "native":
            raise ConfigError(f"{where}: {shape} is measured by the native step, which cannot run here ({path.reason})")


def _validate_on_actor(checkpoint: Path, reference: Path | None, targets, inference: dict, repeats: int,
                       max_problems: int | None, memory: bool, deploy_preset: str | None) -> dict:
    """The InferenceValidator on one actor holding a whole node's CPUs."""
    import ray

    from ryot_ray.cluster import largest_node_cpus
    from ryot_ray.validate.validator import InferenceValidator

    cpus = largest_node_cpus()
    print(f"validating {checkpoint} on one Ray actor with {cpus} CPUs")
    actor = ray.remote(num_cpus=cpus)(InferenceValidator).remote(
        str(checkpoint.resolve()), str(reference.resolve()) if reference else None, targets,
        inference=inference, repeats=repeats, max_problems=max_problems, memory=memory, deploy_preset=deploy_preset)
    return ray.get(actor.validate.remote())


def _print_validation(report: dict, written: list[Path]) -> None:
    speedup, retention = report["integrated_speedup"], report["accuracy_retention"]
    print(f"integrated speedup: {'not measured' if speedup is None else f'{speedup:.2f}x'}; "
          f"accuracy retention: {'not measured' if retention is None else f'{retention:.3f}'}")
    sections = [("Phase 1 at the trained model's size", report["phase1"])]
    deployment = report.get("deployment")
    if deployment and "not_measured" in deployment:
        print(f"at the deployment shape {deployment['shape']}: not measured: {deployment['not_measured']}")
    elif deployment:
        factors = (f"{deployment['per_token_speedup']['median']:.2f}x per token x "
                   + ("token ratio not measured" if deployment["token_ratio"] is None
                      else f"{deployment['token_ratio']:.2f} token ratio = {deployment['integrated_speedup']:.2f}x"))
        print(f"at the deployment shape {deployment['shape']} (random weights): integrated speedup {factors}")
        sections.append((f"Phase 1 at {deployment['shape']} (random weights)", deployment["phase1"]))
    for title, verdicts in sections:
        print(f"{title}:")
        for name, verdict in verdicts.items():
            measured = "not measured" if verdict["measured"] is None else f"{verdict['measured']:.4g}"
            print(f"  {name}: {verdict['direction']} {verdict['target']}, measured {measured} -> "
                  f"{'met' if verdict['met'] else 'NOT MET'}")
    for path in written:
        print(f"wrote {path}")


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(shape) != 2 or min(shape) < 1 for shape in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like 2048x5632,4096x11008, got {text!r}")
    return shapes


def _integers(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers like 1,16,64, got {text!r}")
    return values


def _bench(args: argparse.Namespace) -> int:
    from ryot_ray.atomic import write_json_atomic

    if args.what == "tune":
        return _bench_tune(args)
    if args.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    if getattr(args, "calls", 1) < 1:
        raise ConfigError("--calls must be at least 1")
    if getattr(args, "sequence", None) is not None and args.sequence < 2:
        raise ConfigError("--sequence must be at least 2 (a row predicts its next tokens)")
    if args.what == "kernels" and not args.autotune:
        _check_kernel_tile(args.rows_per_tile, args.tokens_per_tile)
    if args.what == "train":
        from ryot_ray.bench.train import bench_train, table

        config = load_config(args.config, args.overrides)
        if args.steps < 1:
            raise ConfigError("--steps must be at least 1")
        result = bench_train(config, rounds=args.rounds, steps=args.steps, threads=args.threads,
                             sequence=args.sequence)
    elif args.what == "decode":
        from ryot_ray.bench.decode import bench_decode, table

        if args.prompt_tokens < 1 or args.new_tokens < 2 or args.ttft_prompt < 1 or args.paths < 1:
            raise ConfigError("--prompt-tokens, --ttft-prompt and --paths must be at least 1, --new-tokens at least 2")
        if args.gguf and not args.llama_bench:
            raise ConfigError("--gguf files are run by --llama-bench")
        if args.llama_bench and not (args.gguf or args.checkpoint):
            raise ConfigError("--llama-bench runs --gguf files or the --checkpoint exported")
        for path in [args.llama_bench, args.checkpoint, *args.gguf]:
            if path is not None and not path.exists():
                raise ConfigError(f"{path}: no such file or directory")
        result = bench_decode(args.size, rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                              new_tokens=args.new_tokens, threads=args.threads, memory=not args.no_memory,
                              ttft_prompt=args.ttft_prompt, paths=args.paths, checkpoint=args.checkpoint,
                              llama_bench=args.llama_bench, gguf=args.gguf)
    elif args.what == "compression":
        from ryot_ray.bench.compression import bench_compression, table

        result = bench_compression(load_config(args.config, args.overrides), args.size, rounds=args.rounds,
                                   threads=args.threads, sequence=args.sequence)
    elif args.autotune:
        from ryot_ray.bench.kernels import SHAPES
        from ryot_ray.kernels.autotune import autotune, cache_path, table

        result = {"benchmark": "autotune", "cache": str(cache_path()),
                  "shapes": autotune(args.shapes or SHAPES, rounds=args.rounds, calls=args.calls)}
    else:
        from ryot_ray.bench.kernels import SHAPES, TOKENS, bench_kernels, table

        result = bench_kernels(args.shapes or SHAPES, args.tokens or TOKENS, rounds=args.rounds,
                               calls=args.calls, rows_per_tile=args.rows_per_tile,
                               tokens_per_tile=args.tokens_per_tile, threads=args.threads)
    name = "autotune" if getattr(args, "autotune", False) else args.what
    path = args.results_dir / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json_atomic(path, result)
    print(table(result))
    print(f"saved: {path}")
    return 0


def _check_kernel_tile(rows_per_tile: int, tokens_per_tile: int) -> None:
    from ryot_ray.kernels.native import constants, kernels

    if kernels()[0] is None:
        return  # no native kernel: the torch paths run and the report says so
    limits = constants()
    if rows_per_tile not in limits.tile_rows:
        raise ConfigError(f"--rows-per-tile must be one of {', '.join(map(str, limits.tile_rows))}")
    if not 1 <= tokens_per_tile <= limits.max_tokens_per_tile:
        raise ConfigError(f"--tokens-per-tile must be 1 to {limits.max_tokens_per_tile}")


def _info(args: argparse.Namespace) -> int:
    from ryot_ray.infer.load import default_threads, engine_path
    from ryot_ray.kernels.native import constants, kernels
    from ryot_ray.kernels.ternary import kernel_path, native_isas
    from ryot_ray.machine import machine_facts

    facts = machine_facts()
    facts["ternary_kernel"] = {**vars(kernel_path()), "available_isas": native_isas()}
    if kernels()[0] is not None:
        facts["ternary_kernel"]["tile_rows"] = list(constants().tile_rows)
    facts["inference_engine"] = {**vars(engine_path()), "threads": default_threads()}
    if not args.no_ray:
        from ryot_ray.cluster import cluster_resources, connect

        connect(args.address, args.dashboard_host)
        facts["ray_cluster"] = cluster_resources()
    print(json.dumps(facts, indent=2))
    return 0


def _inference_config(checkpoint: Path, overrides: list[str], sections: tuple[str, ...] = ("inference",)):
    """The checkpoint's config with overrides of `sections` keys, checked before anything runs."""
    from ryot_ray.config import Config, with_overrides
    from ryot_ray.train.checkpoint import MODEL_FILE, STATE_FILE, read_checkpoint_record

    bad = [o for o in overrides if not o.startswith(tuple(f"{section}." for section in sections))]
    if bad:
        allowed = " and ".join(f"{section}.*" for section in sections)
        raise ConfigError(f"--set {bad[0]}: only {allowed} keys can change for a trained checkpoint")
    source = str(checkpoint / STATE_FILE)
    record = read_checkpoint_record(checkpoint, verify=(MODEL_FILE,))
    return with_overrides(Config.from_dict(record["config"], source), overrides, source)


def _validate(args: argparse.Namespace) -> int:
    from ryot_ray.config import load_phase1

    config = _inference_config(args.checkpoint, args.overrides, ("inference", "validate"))
    if config.model.quantization != "bitnet":
        raise ConfigError(f"{args.checkpoint} holds the fp32 reference ({config.model.quantization!r}); validate takes "
                          "a BitNet checkpoint (give the reference as --reference)")
    _check_deployment(config.validate.deploy_preset, "validate.deploy_preset", config.model)
    if args.reference is not None:
        _inference_config(args.reference, [])
    targets = load_phase1(args.phase1)
    if args.repeats < 1 or (args.max_problems is not None and args.max_problems < 1):
        raise ConfigError("--repeats and --max-problems must be at least 1")

    from ryot_ray.report.validation import TRAINING_FILE, write_reports

    _connect(args, f"validate {args.checkpoint}")
    print(f"rlvr_paths {config.inference.rlvr_paths}, ffn_level {config.inference.ffn_level}")
    report = _validate_on_actor(args.checkpoint, args.reference, targets, vars(config.inference), args.repeats,
                                args.max_problems, not args.no_memory, config.validate.deploy_preset)
    directory = args.results_dir or args.checkpoint.resolve().parent
    _print_validation(report, write_reports(report, directory, args.checkpoint.resolve().parent / TRAINING_FILE))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ryot_ray.infer.generate import answer_prompts, capped_paths, read_prompts

    config = _inference_config(args.checkpoint, args.overrides)
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be at least 1")
    if note := capped_paths(config.inference):
        print(f"ryot-ray: note: {note}", file=sys.stderr)
    answers = answer_prompts(args.checkpoint, config.inference, prompts, args.max_new_tokens)
    lines = [json.dumps(record) for record in answers]
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} answers to {args.output}")
    else:
        print("\n".join(lines))
    return 0


def _freeze(args: argparse.Namespace) -> int:
    from ryot_ray.infer.engines import frozen_file
    from ryot_ray.infer.load import engine_path

    config = _inference_config(args.checkpoint, args.overrides)
    if config.model.quantization != "bitnet":
        raise ConfigError(f"{args.checkpoint} holds the fp32 reference ({config.model.quantization!r}); "
                          "freeze takes a BitNet checkpoint")
    path = engine_path()
    if path.name != "native":
        raise ConfigError(f"the native engine does not run here, so there is nothing to freeze for: {path.reason}")
    frozen = frozen_file(args.checkpoint, config.inference)
    made_from = frozen.made_from
    print(f"{'froze' if frozen.made_now else 'already frozen, reused'}: {frozen.path} "
          f"({frozen.path.stat().st_size / 2**20:.1f} MB)")
    print(f"made from: weights sha256 {made_from['weights'][:16]}…, tiles {made_from['tiles']}, int8 embeddings "
          f"{made_from['int8']}, sparse {made_from['sparse']}, native build {made_from['library']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ryot_ray.train.checkpoint import atomic_directory, import_pretrained

    if args.checkpoint.exists():
        raise ConfigError(f"--checkpoint {args.checkpoint} exists; give a new directory")
    with atomic_directory(args.checkpoint) as staging:
        config = import_pretrained(args.pretrained, staging)
    kind = "BitNet (ternary)" if config.model.quantization == "bitnet" else "full-precision"
    print(f"imported {args.pretrained}: a {kind} {config.model.architecture} model -> {args.checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ryot_ray.infer.export import INPUT_ROUNDING, export_gguf
    from ryot_ray.train.checkpoint import load_checkpoint

    model, tokenizer, *_ = load_checkpoint(args.checkpoint)
    tensors = export_gguf(model, tokenizer, args.gguf, args.type)
    print(f"wrote {args.gguf} ({args.gguf.stat().st_size / 2**20:.1f} MB, llama.cpp architecture bitnet)")
    for kind in dict.fromkeys(t.type for t in tensors):
        group = [t for t in tensors if t.type == kind]
        linears = sum(t.ternary for t in group)
        rounding = f"; {linears} ternary linears, inputs rounded to {INPUT_ROUNDING[kind]}" if linears else ""
        print(f"  {len(group):>3} {kind:<6} tensors{rounding}; largest dequantization error "
              f"{max(t.max_error for t in group):.2e} of the tensor's largest value")
    return 0


COMMANDS = {"tune": _tune, "train": _train, "bench": _bench, "validate": _validate, "generate": _generate,
            "freeze": _freeze, "import": _import, "export": _export, "info": _info}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"ryot-ray: error: {error}", file=sys.stderr)
        return 2
