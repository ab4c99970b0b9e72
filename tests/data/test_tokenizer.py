from transformers import AutoTokenizer

from ryot_ray.data.tokenizer import CHARACTERS, build_char_tokenizer, load_tokenizer


def test_one_token_per_character_and_round_trip():
    tokenizer = build_char_tokenizer()
    text = "sort 3 1 2|\n>1 2 3"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer(text)["input_ids"] == [tokenizer.bos_token_id] + ids
    assert len(tokenizer) == 4 + len(CHARACTERS)


def test_unknown_characters_map_to_unk():
    tokenizer = build_char_tokenizer()
    ids = tokenizer("é", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.unk_token_id]


def test_saved_tokenizer_loads_with_autotokenizer(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("12+34|")["input_ids"] == tokenizer("12+34|")["input_ids"]
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token) == ("<pad>", "</s>", "<s>")


def test_load_tokenizer_adds_a_pad_token(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    assert load_tokenizer(str(tmp_path)).pad_token == "<unk>"
