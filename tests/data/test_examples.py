import pytest
import torch

from ryot_ray.config import ConfigError, CorpusConfig, DataConfig
from ryot_ray.data.examples import (
    IGNORE_INDEX, Example, collate, encode_problem, evaluation_problems, pack_examples, sampled_batches,
    training_examples,
)
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


def test_packing_cuts_the_joined_examples_into_rows_of_exactly_the_sequence(tokenizer):
    examples = [encode_problem(tokenizer, Problem("add", 1, f"{a}+4|", "", str(a + 4)), False) for a in range(10)]
    rows = pack_examples(examples, 16)
    joined = [token for e in examples for token in e.input_ids]
    assert len(rows) == len(joined) // 16 and len(joined) % 16  # the short tail is dropped
    assert all(len(row.input_ids) == len(row.labels) == 16 for row in rows)
    assert [token for row in rows for token in row.input_ids] == joined[:16 * len(rows)]
    # each token keeps its own label: prompts (from BOS to '|') unlearned, completions learned
    labels = [label for e in examples for label in e.labels]
    assert [label for row in rows for label in row.labels] == labels[:16 * len(rows)]
    first = examples[0]
    prompt = first.labels.count(IGNORE_INDEX)
    assert rows[0].labels[:prompt] == [IGNORE_INDEX] * prompt
    assert rows[0].labels[prompt:len(first.labels)] == first.input_ids[prompt:]
    assert rows[0].input_ids[len(first.labels)] == tokenizer.bos_token_id  # the next example starts


def test_packing_keeps_what_fits_exactly_and_nothing_shorter():
    examples = [Example([1, 2, 3], [IGNORE_INDEX, 2, 3]), Example([4, 5, 6], [IGNORE_INDEX, 5, 6])]
    assert pack_examples(examples, 3) == examples
    assert pack_examples(examples, 4) == [Example([1, 2, 3, 4], [IGNORE_INDEX, 2, 3, IGNORE_INDEX])]
    assert pack_examples(examples, 7) == []


def test_sampled_batches_are_the_examples_unless_a_sequence_is_asked(smoke_config, tokenizer):
    plain = sampled_batches(smoke_config, tokenizer, steps=2)
    assert torch.equal(plain[0]["input_ids"], sampled_batches(smoke_config, tokenizer, steps=1)[0]["input_ids"])
    assert (plain[0]["attention_mask"] == 0).any()  # padded to the batch's longest example
    packed = sampled_batches(smoke_config, tokenizer, steps=2, sequence=48)
    for batch in packed:
        assert batch["input_ids"].shape == (smoke_config.train.batch_size, 48)
        assert batch["attention_mask"].all()  # no padding: every row is full
        assert (batch["labels"] == IGNORE_INDEX).any() and (batch["labels"] != IGNORE_INDEX).any()
    with pytest.raises(ConfigError, match="fewer than a batch of 16"):
        sampled_batches(smoke_config, tokenizer, steps=1, sequence=2000)
