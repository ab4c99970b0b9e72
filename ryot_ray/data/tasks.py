"""The built-in verifiable task suite: problems generated from a seed, checked exactly.

A problem is `prompt` → `solution` (a short worked scratchpad, possibly empty) →
`ANSWER_MARK` → `answer`. The verifier reads the text after the last answer mark and
compares it with the answer string; nothing is scored by similarity.

Which split a problem belongs to is a function of its prompt alone (a salted hash), so
train, validation and test are disjoint by construction, whatever the seed or sizes.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

ANSWER_MARK = ">"
EXHAUSTED_AFTER = 5000  # draws without a new problem after which a level counts as used up
SPLITS = ("train", "validation", "test")
_SPLIT_PERCENT = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}


@dataclass(frozen=True)
class Problem:
    family: str
    difficulty: int
    prompt: str
    solution: str
    answer: str

    def completion(self, scratchpad: bool = True) -> str:
        """The text a model should produce after the prompt."""
        return (self.solution if scratchpad else "") + ANSWER_MARK + self.answer


def extract_answer(text: str) -> str | None:
    """The answer a completion gives: what follows its last answer mark."""
    if ANSWER_MARK not in text:
        return None
    return text.rsplit(ANSWER_MARK, 1)[1].strip()


def verify(problem: Problem, completion: str) -> bool:
    return extract_answer(completion) == problem.answer


def split_of(prompt: str) -> str:
    bucket = int(hashlib.sha256(b"ryot-split:" + prompt.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, percent in _SPLIT_PERCENT.items() if bucket in percent)


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _addition(rng: random.Random, difficulty: int) -> Problem:
    """Two numbers of up to `difficulty` digits; the scratchpad adds column by column."""
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total};")
        carry = total // 10
    return Problem("add", difficulty, f"{a}+{b}|", "".join(steps), str(a + b))


_MULTIPLIER_DIGITS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (3, 2)}


def _multiplication(rng: random.Random, difficulty: int) -> Problem:
    """Level 1: 1×1 digits, 2: 2×1, 3: 2×2, 4: 3×2; the scratchpad lists partial products."""
    digits_a, digits_b = _MULTIPLIER_DIGITS[difficulty]
    a, b = _number(rng, digits_a), _number(rng, digits_b)
    partials = [
        f"{a}*{int(d) * 10**i}={a * int(d) * 10**i};" for i, d in enumerate(str(b)[::-1])
    ]
    solution = "".join(partials) if len(partials) > 1 else ""
    return Problem("mul", difficulty, f"{a}*{b}|", solution, str(a * b))


def _sorting(rng: random.Random, difficulty: int) -> Problem:
    """Sort 2·difficulty+1 single digits ascending."""
    items = [rng.randint(0, 9) for _ in range(2 * difficulty + 1)]
    prompt = "sort " + " ".join(map(str, items)) + "|"
    return Problem("sort", difficulty, prompt, "", " ".join(map(str, sorted(items))))


def _reversal(rng: random.Random, difficulty: int) -> Problem:
    """Reverse 2·difficulty+1 lowercase letters."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(2 * difficulty + 1))
    return Problem("reverse", difficulty, f"rev {word}|", "", word[::-1])


FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "add": _addition,
    "mul": _multiplication,
    "sort": _sorting,
    "reverse": _reversal,
}


def generate(
    family: str, difficulty: int, split: str, count: int, seed: int, unique: bool = True
) -> list[Problem]:
    """`count` problems of one family and level from one split, the same for the same seed.

    With `unique`, no prompt repeats; a level with fewer distinct problems in the split
    than `count` yields them all (level 1 addition has only 100 problems in total).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    make = FAMILIES[family]
    rng = random.Random(f"{seed}:{family}:{difficulty}:{split}")
    problems: list[Problem] = []
    seen: set[str] = set()
    since_new = 0
    for _ in range(100 * count):
        problem = make(rng, difficulty)
        since_new += 1
        if split_of(problem.prompt) != split or (unique and problem.prompt in seen):
            if since_new > EXHAUSTED_AFTER:
                break  # the level has no more problems in this split
            continue
        since_new = 0
        seen.add(problem.prompt)
        problems.append(problem)
        if len(problems) == count:
            break
    return problems


def task_suite(
    families: list[str], difficulties: list[int], split: str, per_level: int, seed: int,
    unique: bool = True,
) -> list[Problem]:
    return [
        problem
        for family in families
        for difficulty in difficulties
        for problem in generate(family, difficulty, split, per_level, seed, unique)
    ]
