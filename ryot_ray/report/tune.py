"""The search's reports: `tune_summary.json`, the Pareto plot and the trials table that
follows the best trial's validation in `summary.md`."""

from __future__ import annotations

from pathlib import Path

from ryot_ray.report.validation import SUMMARY_FILE, save_figure, shown
from ryot_ray.atomic import write_json_atomic
from ryot_ray.tune.summary import fallback_warning

TUNE_SUMMARY_FILE = "tune_summary.json"
PARETO_PLOT = "pareto_front.png"


def write_search_summary(summary: dict, directory: Path) -> Path:
    """The search's summary as soon as it is known, so a failed validation loses nothing."""
    write_json_atomic(directory / TUNE_SUMMARY_FILE, summary)
    return directory / TUNE_SUMMARY_FILE


def write_tune_reports(summary: dict, validation: dict, directory: Path, wall_time_s: float) -> list[Path]:
    """Add the validation's headline to the summary, write it, the plot and the table."""
    summary = summary | {
        "wall_time_s": wall_time_s,
        "validated_trial": summary["best_trial"],
        "validation": {"checkpoint": validation["checkpoint"],
                       "integrated_speedup": validation["integrated_speedup"],
                       "accuracy_retention": validation["accuracy_retention"],
                       "threads": validation["threads"],
                       "phase1": validation["phase1"]},
    }
    write_search_summary(summary, directory)
    plot = _pareto_plot(summary, directory / PARETO_PLOT)
    with open(directory / SUMMARY_FILE, "a") as markdown:
        markdown.write(trials_markdown(summary, plot.name if plot else None))
    return [directory / TUNE_SUMMARY_FILE] + ([plot] if plot else [])


def _pareto_plot(summary: dict, path: Path) -> Path | None:
    trials = [t for t in summary["trials"] if "speedup" in t and "inference_accuracy" in t]
    if not trials:
        return None
    front = set(summary["pareto_front"])

    def draw(axes):
        for status, marker in (("completed", "o"), ("stopped early", "x")):
            chosen = [t for t in trials if t["status"] == status]
            axes.scatter([t["speedup"] for t in chosen], [100 * t["inference_accuracy"] for t in chosen],
                         marker=marker, label=f"{status} ({len(chosen)})")
        on_front = sorted((t for t in trials if t["trial_id"] in front), key=lambda t: t["speedup"])
        axes.plot([t["speedup"] for t in on_front], [100 * t["inference_accuracy"] for t in on_front],
                  color="grey", linewidth=1, label="Pareto front")
        best = summary["best"]
        axes.scatter(best["speedup"], 100 * best["inference_accuracy"], s=160, facecolors="none",
                     edgecolors="red", label=f"best objective ({best['trial_id']})")
        floor = 100 * summary["accuracy_floor"] * summary["reference"]["accuracy"]
        axes.axhline(floor, color="red", linestyle=":", linewidth=1, label="accuracy floor")
        axes.set_xlabel("speedup over the reference (last epoch's measurement)")
        axes.set_ylabel("exact match with the trial's inference config (%)")
        axes.set_title("Every trial, speedup vs accuracy")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)

    return save_figure(path, draw)


def trials_markdown(summary: dict, plot: str | None) -> str:
    overhead = summary["overhead"]
    validation = summary["validation"]
    lines = [
        "", "# Search", "",
        f"Space `{summary['space']}`, {summary['search']} search, scheduler {summary['scheduler']['name']} "
        f"(max_t {summary['scheduler']['max_t']}, grace period {summary['scheduler']['grace_period']}, "
        f"reduction factor {summary['scheduler']['reduction_factor']}); {len(summary['trials'])} trials, "
        f"{summary['stopped_early']} stopped early, {summary['errored']} errored, {summary['diverged']} diverged; "
        f"wall time {summary['wall_time_s']:.0f} s.",
        "",
        f"Objective: `{summary['objective_formula']}`, accuracy floor {summary['accuracy_floor']}. "
        f"Reference accuracy on the measured problems: {summary['reference']['accuracy']:.3f}"
        + ("; every trial started from its weights." if summary["reference"]["trials_start_from_it"] else "."),
        "",
        f"Best trial `{summary['best_trial']}` (validated above): integrated speedup "
        f"{shown(validation['integrated_speedup'])}, accuracy retention {shown(validation['accuracy_retention'], 3)}.",
        "",
        f"Trial time {overhead['trial_time_s']:.0f} s: training {overhead['training_s']:.0f} s, evaluation and "
        f"measurement {overhead['evaluation_and_measurement_s']:.0f} s, worker set-up (model, data) "
        f"{overhead['worker_setup_s']:.0f} s, Ray (starting the Train run's processes, checkpoints, reports) "
        f"{overhead['ray_s']:.0f} s = {shown(None if overhead['ray_fraction'] is None else 100 * overhead['ray_fraction'], 1)} %.",
        "",
        f"Trials measured their speed with kernel path(s): {', '.join(summary['kernel_paths']) or 'none reported'}, "
        f"on {', '.join(map(str, summary['threads'])) or 'unreported'} thread(s); the validation above on "
        f"{validation['threads']}. A speedup holds for its thread count only. "
        + ("Trial speedups are timed on each trial's own model." if summary["speed_at"] == "model" else
           f"Trial speedups price each trial's forced work (its tokens and paths) at the {summary['speed_at']} "
           "shape: decode-step times of its knobs on random weights against fp32 of that shape.")
        + (f" **Warning: {warning}.**" if (warning := fallback_warning(summary["kernel_paths"])) else ""),
        "", "| trial | status | epochs | objective | speedup | accuracy | retention | knobs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trial in sorted(summary["trials"], key=lambda t: -t.get("objective", float("-inf"))):
        knobs = ", ".join(f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float)
                          else f"{key.split('.')[-1]}={value}" for key, value in trial["params"].items())
        lines.append(f"| {trial['trial_id']} | {trial['status']} | {trial['epochs']} "
                     f"| {shown(trial.get('objective'), 3)} | {shown(trial.get('speedup'))} "
                     f"| {shown(trial.get('inference_accuracy'), 3)} | {shown(trial.get('accuracy_retention'), 3)} "
                     f"| {knobs} |")
    if plot:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"
