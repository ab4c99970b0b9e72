import pytest

from ryot_ray.data.tasks import ANSWER_MARK, FAMILIES, SPLITS, Problem, extract_answer, generate, split_of, task_suite, verify


def test_verifier_accepts_exact_answer_only():
    problem = Problem("add", 2, "47+85|", "7+5=12;4+8+1=13;", "132")
    assert verify(problem, "7+5=12;4+8+1=13;>132")
    assert verify(problem, ">132")
    assert not verify(problem, ">133")
    assert not verify(problem, ">1320")
    assert not verify(problem, "132")  # no answer mark, no answer
    assert not verify(problem, ">13 2")
    assert extract_answer("a>b>c ") == "c"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_generated_answers_are_correct(family, difficulty):
    for problem in generate(family, difficulty, "train", 30, seed=1):
        assert verify(problem, problem.completion())
        assert problem.completion(scratchpad=False) == ANSWER_MARK + problem.answer
        body = problem.prompt.rstrip("|")
        if family == "add":
            a, b = map(int, body.split("+"))
            assert int(problem.answer) == a + b
        elif family == "mul":
            a, b = map(int, body.split("*"))
            assert int(problem.answer) == a * b
        elif family == "sort":
            items = body.split()[1:]
            assert problem.answer.split() == sorted(items) and len(items) == 2 * difficulty + 1
        else:
            assert problem.answer == body.split()[1][::-1]


def test_scratchpads_of_known_problems():
    import random

    class FixedRng(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = iter(values)

        def randint(self, a, b):
            return next(self.values)

    problem = FAMILIES["add"](FixedRng([47, 85]), 2)
    assert problem == Problem("add", 2, "47+85|", "7+5=12;4+8+1=13;", "132")
    problem = FAMILIES["mul"](FixedRng([47, 36]), 3)
    assert problem.solution == "47*6=282;47*30=1410;" and problem.answer == "1692"


def test_splits_are_disjoint_and_deterministic():
    seen = {}
    for split in SPLITS:
        problems = task_suite(sorted(FAMILIES), [1, 2, 3], split, 200, seed=3)
        assert all(split_of(p.prompt) == split for p in problems)
        seen[split] = {p.prompt for p in problems}
        assert problems == task_suite(sorted(FAMILIES), [1, 2, 3], split, 200, seed=3)
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    assert len(seen["test"]) > 500


def test_small_levels_yield_every_problem_they_have():
    test_additions = generate("add", 1, "test", 1000, seed=0)
    every = {f"{a}+{b}|" for a in range(10) for b in range(10)}
    assert {p.prompt for p in test_additions} == {p for p in every if split_of(p) == "test"}


def test_training_draws_may_repeat_but_stay_in_split():
    problems = generate("add", 1, "train", 500, seed=0, unique=False)
    assert len(problems) == 500 and len({p.prompt for p in problems}) < 100
    assert all(split_of(p.prompt) == "train" for p in problems)


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        generate("add", 1, "dev", 1, seed=0)
