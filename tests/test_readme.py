"""The README's examples: every `ryot-ray` line is a command the CLI takes (with its
optional parts left out and put in), and its example prompt is one the task suite makes."""

import re
import shlex
from pathlib import Path

import pytest

from ryot_ray.cli import COMMANDS as CLI_COMMANDS, _parser
from ryot_ray.config import DataConfig
from ryot_ray.data.tasks import task_suite

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"N": "2", "R": "2", "NAME": "x", "C": "configs/smoke.yaml", "S": "search_spaces/smoke.yaml"}


def readme_commands() -> list[str]:
    """The `ryot-ray` command lines of the README's code blocks, continuations joined and
    comments dropped."""
    blocks = re.findall(r"```\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split(" # ")[0].strip()
        for prefix in ("ryot-ray ", "python -m ryot_ray "):
            if prefix in line:
                commands.append(line[line.index(prefix) + len(prefix):])
    return commands


def variants(command: str) -> list[list[str]]:
    """The command without its [optional] parts, and with them (the first of a|b)."""
    bare = re.sub(r"\[[^]]*\]", "", command)
    full = re.sub(r"\[([^]]*)\]", r"\1", command).replace("...", "")
    argvs = []
    for text in (bare, full):
        argv = []
        for word in shlex.split(text):
            first, bar, rest = word.partition("|")
            word = first if bar and rest else word  # small|1b -> small; a prompt '12+34|' stays
            argv.append(PLACEHOLDERS.get(word, word))
        argvs.append(argv)
    return argvs


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    assert {c.split()[0] for c in COMMANDS} == set(CLI_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_is_one_the_cli_takes(command):
    for argv in variants(command):
        _parser().parse_args(argv)  # argparse exits on anything it does not take


def shape(prompt: str) -> str:
    """A prompt with its numbers and words abstracted: '12+34|' -> '9+9|'."""
    return re.sub(r"[a-z]+", "a", re.sub(r"\d+", "9", prompt.replace("sort", "S").replace("rev", "R")))


def test_the_readme_prompts_are_prompts_of_the_task_suite():
    prompts = re.findall(r"--prompt '([^']+)'", (REPO / "README.md").read_text())
    data = DataConfig()
    made = {shape(p.prompt) for p in task_suite(data.families, data.difficulties, "train", 50, seed=0)}
    assert prompts and all(shape(prompt) in made for prompt in prompts), (prompts, sorted(made)[:10])


def test_the_readme_generate_example_answers(capsys, trained_checkpoint):
    from ryot_ray.cli import main

    (command,) = [c for c in COMMANDS if c.startswith("generate")]
    argv = variants(command.replace("DIR", str(trained_checkpoint)))[0]
    assert main(argv) == 0 and '"prompt": "12+34|"' in capsys.readouterr().out
