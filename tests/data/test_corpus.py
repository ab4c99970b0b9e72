import json

import pytest

from ryot_ray.config import CorpusConfig
from ryot_ray.data.corpus import load_texts, pack_blocks


def test_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\nsecond line\n")
    assert load_texts(CorpusConfig(path=str(path))) == ["first line", "second line"]


def test_local_jsonl_with_text_field(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(["a b", "c d"])))
    assert load_texts(CorpusConfig(path=str(path), text_field="body")) == ["a b", "c d"]
    with pytest.raises(KeyError, match="no field 'text'"):
        load_texts(CorpusConfig(path=str(path)))


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_texts(CorpusConfig(path=str(tmp_path / "absent.txt")))


def test_packing_cuts_full_blocks_with_eos_between_documents(tokenizer):
    blocks = pack_blocks(["abc", "defgh"], tokenizer, block_size=4, max_blocks=10)
    eos = tokenizer.eos_token_id
    stream = tokenizer("abc", add_special_tokens=False)["input_ids"] + [eos]
    stream += tokenizer("defgh", add_special_tokens=False)["input_ids"] + [eos]
    assert blocks == [stream[0:4], stream[4:8]]  # the 2 leftover tokens are dropped
    assert pack_blocks(["abcdefghijkl"], tokenizer, block_size=4, max_blocks=2) == [
        tokenizer("abcd", add_special_tokens=False)["input_ids"],
        tokenizer("efgh", add_special_tokens=False)["input_ids"],
    ]
