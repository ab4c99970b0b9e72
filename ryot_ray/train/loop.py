"""`train_loop_per_worker`: what each Ray Train worker runs.

Each worker builds the same model from the same seed, resumes from the run's latest
checkpoint if there is one, trains on its shard of the examples (DDP over gloo when
there are several workers), and once per epoch evaluates, then reports metrics and
(from rank 0) a checkpoint. A non-finite loss on any worker stops every worker at the
same step, with status `diverged`; the last good checkpoint stays the run's latest.

A caller may pass `epoch_metrics(model, tokenizer, config, problems) -> dict`: rank 0
calls it after each epoch's evaluation and adds what it returns to the report. That is
how a Tune trial adds its measured speedup and objective without this stage importing
the stages below it. A caller's `run_id` marks the worker-group starts it caused, so the
restarts after a worker failure can be told from a resumed run's first start.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ryot_ray.config import Config
from ryot_ray.data.examples import collate, encode_problem, evaluation_problems, training_examples
from ryot_ray.data.tokenizer import build_char_tokenizer, load_tokenizer
from ryot_ray.machine import machine_facts
from ryot_ray.memory import peak_rss_mb
from ryot_ray.model.activation_stats import activation_compression
from ryot_ray.model.build import build_model
from ryot_ray.model.matryoshka import ffn_levels, sampled_level, use_width
from ryot_ray.train.checkpoint import (MODEL_FILE, OPTIMIZER_FILE, TrainingState, load_optimizer, load_weights,
                                      read_checkpoint_record, save_checkpoint)
from ryot_ray.train.distributed import all_reduce, world_size
from ryot_ray.train.evaluate import exact_match, mean_loss
from ryot_ray.train.schedule import two_stage

DIVERGED = "diverged"  # a run's status once its loss stopped being finite

SPIKE_WINDOW = 50  # steps of history an anomaly is judged against
# Ray Train logs every report's whole metrics dict at INFO, from a logger named after its
# source file (so RunConfig's LoggingConfig, which filters "ray.train", misses it).
REPORT_LOGGER_SUFFIX = "ray/train/v2/_internal/execution/context.py"
# Progress goes through logging: Ray Train's workers log INFO to the console once, while
# its patched print() writes a line twice there
log = logging.getLogger(__name__)


def quiet_report_logging() -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.endswith(REPORT_LOGGER_SUFFIX):
            logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class EpochStats:
    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    tokens: int = 0
    lr: float = 0.0
    diverged: bool = False


def worker_threads(config: Config) -> int:
    """As many torch threads as CPUs this worker was given (Ray sets OMP_NUM_THREADS so)."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", config.train.cpus_per_worker)))


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not norms, not biases)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "decay": True}, {"params": others, "decay": False}]
    return torch.optim.AdamW(groups, lr=config.train.lr, betas=tuple(config.train.betas))


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    total_steps: int,
    config: Config,
    progress_every: int = 0,
) -> EpochStats:
    """One pass over `loader`; every `progress_every` steps, a progress line."""
    stats = EpochStats()
    accum = config.train.grad_accum
    steps_per_epoch = math.ceil(len(loader) / accum)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train.bf16)
    step_loss, step_start = 0.0, time.perf_counter()
    model.train()
    for index, batch in enumerate(loader):
        window = min(accum, len(loader) - index // accum * accum)  # the last one may be short
        boundary = (index + 1) % accum == 0 or index + 1 == len(loader)
        sync = contextlib.nullcontext()
        if isinstance(model, DistributedDataParallel) and not boundary:
            sync = model.no_sync()
        use_width(model, sampled_level(config.seed, state.step, index % accum, config.model.mrl_depth))
        with sync, autocast:
            loss = model(**batch).loss
            (loss / window).backward()
        step_loss += loss.item() / window
        stats.tokens += int(batch["attention_mask"].sum())
        if not boundary:
            continue
        total, nonfinite = all_reduce(torch.tensor([step_loss, float(not math.isfinite(step_loss))])).tolist()
        if nonfinite:
            stats.diverged = True
            stats.losses.append(float("nan"))
            break
        stats.lr, weight_decay = two_stage(state.step, total_steps, config.train)
        for group in optimizer.param_groups:
            group["lr"] = stats.lr
            group["weight_decay"] = weight_decay if group["decay"] else 0.0
        if config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        now = time.perf_counter()
        mean = total / world_size()
        _flag_anomalies(state, stats, mean, now - step_start, config.train.spike_factor)
        stats.losses.append(mean)
        stats.step_times.append(now - step_start)
        step_loss, step_start = 0.0, now
        if progress_every and len(stats.losses) % progress_every == 0:
            recent = statistics.fmean(stats.losses[-progress_every:])
            log.info("epoch %d: step %d/%d, loss %.4f, lr %.2e",
                     state.epoch + 1, len(stats.losses), steps_per_epoch, recent, stats.lr)
    use_width(model, 0)
    return stats


def _flag_anomalies(state: TrainingState, stats: EpochStats, loss: float, seconds: float, factor: float) -> None:
    """Record a loss spike or a slow step against the median of the recent steps."""
    for kind, value, past in (("loss_spike", loss, stats.losses), ("slow_step", seconds, stats.step_times)):
        recent = past[-SPIKE_WINDOW:]
        if len(recent) < 10:
            continue
        median = statistics.median(recent)
        if value > factor * median:
            state.anomalies.append(
                {"kind": kind, "epoch": state.epoch + 1, "step": state.step, "value": value, "median": median}
            )


def epoch_record(stats: EpochStats, state: TrainingState, seconds: float) -> dict:
    times = stats.step_times or [0.0]
    mean_time = statistics.fmean(times)
    tokens = all_reduce(torch.tensor([float(stats.tokens)]))
    rss = all_reduce(torch.tensor([peak_rss_mb()]), op=dist.ReduceOp.MAX)
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "status": DIVERGED if stats.diverged else "ok",
        "train_loss": statistics.fmean(stats.losses) if stats.losses else float("nan"),
        "lr": stats.lr,
        "tokens_per_s": float(tokens) / seconds,
        "step_time_mean_s": mean_time,
        "step_time_max_s": max(times),
        "step_time_cv": statistics.pstdev(times) / mean_time if mean_time else 0.0,
        "peak_rss_mb": float(rss),
        "epoch_time_s": seconds,
    }


EpochMetrics = Callable[[torch.nn.Module, object, Config, list], dict]


def epoch_line(record: dict) -> str:
    """An epoch's figures in one line, for the console."""
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
            + (f", val loss {record['val_loss']:.4f}, val accuracy {record['accuracy']:.3f}" if "val_loss" in record
               else "")
            + f", {record['tokens_per_s']:.0f} tokens/s")


def train_loop_per_worker(loop_config: dict, epoch_metrics: EpochMetrics | None = None,
                          run_id: str | None = None, start_weights: ray.ObjectRef | None = None,
                          progress: bool = False) -> dict | None:
    """`start_weights`: a full-precision state dict in the object store (so every node reads
    it) that a run without a checkpoint starts from. `progress`: rank 0 logs progress
    lines during each epoch and the epoch's line after it (Ray forwards them to the
    driver's console); a Tune search prints its own line per trial and epoch instead.
    Returns the worker's last report (`fit()` returns rank 0's: a Tune trial reports it)."""
    setup_start = time.perf_counter()
    quiet_report_logging()
    config = Config.from_dict(loop_config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(worker_threads(config))
    torch.manual_seed(config.seed)

    if config.model.pretrained:
        tokenizer = load_tokenizer(config.model.pretrained)
    else:
        tokenizer = build_char_tokenizer()
    checkpoint = ray.train.get_checkpoint()
    weights = ray.get(start_weights) if start_weights is not None and not checkpoint else None
    model = build_model(config.model, tokenizer, weights=weights)
    optimizer = build_optimizer(model, config)
    state = TrainingState(machine=machine_facts())
    if checkpoint:
        with checkpoint.as_directory() as directory:
            # refuses a truncated or corrupted file, by name
            record = read_checkpoint_record(directory, verify=(MODEL_FILE, OPTIMIZER_FILE))
            load_weights(directory, model)
            load_optimizer(directory, optimizer, record)
            state = TrainingState(**record["state"])
            state.machine = machine_facts()
    state.starts.append({"run": run_id, "epoch": state.epoch, "step": state.step, "world_size": world})
    model = ray.train.torch.prepare_model(model)
    core = model.module if isinstance(model, DistributedDataParallel) else model

    examples = training_examples(config.data, tokenizer, config.seed)
    validation = evaluation_problems(config.data, "validation", config.seed)
    validation_examples = [encode_problem(tokenizer, p, config.data.scratchpad) for p in validation]
    sampler = DistributedSampler(examples, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
    loader = DataLoader(
        examples, batch_size=config.train.batch_size, sampler=sampler,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
    )
    total_steps = config.train.epochs * math.ceil(len(loader) / config.train.grad_accum)
    evaluate = partial(exact_match, tokenizer=tokenizer, scratchpad=config.data.scratchpad,
                       batch_size=config.eval.batch_size, rank=rank, world=world)

    setup_time = time.perf_counter() - setup_start  # model, data, process group: reported once per process
    record = None
    if state.epoch >= config.train.epochs and state.history:
        # restarted after its last checkpoint (e.g. a resumed Tune trial): report where it
        # ended again, with that checkpoint, marked so that its timers are not counted twice
        record = state.history[-1] | {"replayed": True}
        ray.train.report(record, checkpoint=checkpoint if rank == 0 else None)
    while state.epoch < config.train.epochs and state.status != DIVERGED:
        sampler.set_epoch(state.epoch)
        start = time.perf_counter()
        progress_every = max(1, total_steps // config.train.epochs // 10) if progress and rank == 0 else 0
        stats = train_epoch(model, loader, optimizer, state, total_steps, config, progress_every)
        record = epoch_record(stats, state, time.perf_counter() - start)
        if stats.diverged:
            state.status = DIVERGED
            ray.train.report(record)
            return record
        core.eval()
        eval_start = time.perf_counter()
        record["val_loss"] = mean_loss(core, validation_examples, tokenizer.pad_token_id,
                                       config.eval.batch_size, rank, world)
        record.update(evaluate(core, problems=validation))
        record.update(narrower_widths(core, evaluate, validation, record["accuracy"]))
        compression = activation_compression(
            core, collate(validation_examples[: config.eval.batch_size], tokenizer.pad_token_id))
        if compression:
            record["activation_compression"] = compression
        state.epoch += 1
        if state.epoch == config.train.epochs:
            test_problems = evaluation_problems(config.data, "test", config.seed)
            test = evaluate(core, problems=test_problems)
            test |= narrower_widths(core, evaluate, test_problems, test["accuracy"])
            record.update({f"test_{key}": value for key, value in test.items()})
            state.status = "finished"
        record["eval_time_s"] = time.perf_counter() - eval_start
        record["setup_time_s"], setup_time = setup_time, 0.0
        record["worker_group_starts"] = sum(start["run"] == run_id for start in state.starts)
        if epoch_metrics is not None and rank == 0:
            measure_start = time.perf_counter()
            record.update(epoch_metrics(core, tokenizer, config, validation))
            record["measure_time_s"] = time.perf_counter() - measure_start
        state.history.append(record)
        if progress and rank == 0:
            log.info(epoch_line(record))
        _report(record, core, tokenizer, config, state, optimizer, rank)
    return record


def narrower_widths(model: torch.nn.Module, evaluate, problems, full_width_accuracy: float) -> dict:
    """Accuracy at each nested FFN width, the full one included ({} without nesting)."""
    widths = ffn_levels(model)
    if len(widths) < 2:
        return {}
    by_width = {str(widths[0]): full_width_accuracy}
    for level, width in enumerate(widths[1:], start=1):
        use_width(model, level)
        by_width[str(width)] = evaluate(model, problems=problems)["accuracy"]
    use_width(model, 0)
    return {"accuracy_by_width": by_width}


def _report(record, model, tokenizer, config, state, optimizer, rank) -> None:
    """Every worker reports (it is a barrier); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(Path(directory), model, tokenizer, config, state, optimizer)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))
