import torch

from ryot_ray.config import CorpusConfig, DataConfig
from ryot_ray.data.examples import IGNORE_INDEX, collate, encode_problem, evaluation_problems, training_examples
from ryot_ray.data.tasks import Problem, split_of


def test_only_the_completion_is_labelled(tokenizer):
    problem = Problem("add", 1, "3+4|", "", "7")
    example = encode_problem(tokenizer, problem, scratchpad=True)
    prompt_length = len("3+4|") + 1  # BOS
    assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert example.labels[prompt_length:] == example.input_ids[prompt_length:]
    assert tokenizer.decode(example.input_ids[prompt_length:-1]) == ">7"
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_collate_right_pads(tokenizer):
    short = encode_problem(tokenizer, Problem("add", 1, "3+4|", "", "7"), True)
    long = encode_problem(tokenizer, Problem("add", 2, "13+4|", "3+4=7;1+0=1;", "17"), True)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(long.input_ids))
    pad = len(long.input_ids) - len(short.input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * pad
    assert (batch["labels"][0, len(short.input_ids):] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][1], torch.tensor(long.input_ids))


def test_training_examples_mix_tasks_and_corpus(tokenizer, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 50)
    data = DataConfig(families=["add"], difficulties=[1], train_per_level=20,
                      corpus=CorpusConfig(path=str(corpus), block_size=16, max_blocks=3))
    examples = training_examples(data, tokenizer, seed=0)
    assert len(examples) == 23
    assert all(len(e.input_ids) == 16 and e.labels == e.input_ids for e in examples[20:])


def test_evaluation_problems_come_from_their_split():
    data = DataConfig(families=["sort"], difficulties=[2], eval_per_level=10)
    problems = evaluation_problems(data, "test", seed=0)
    assert len(problems) == 10 and all(split_of(p.prompt) == "test" for p in problems)
