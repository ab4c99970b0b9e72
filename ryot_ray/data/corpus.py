"""Text corpora through `datasets.load_dataset`, tokenized and packed into blocks.

A local `.txt` file loads with the `text` builder and a `.json`/`.jsonl` file with the
`json` builder; anything else is taken as a hub dataset name (needs the network, e.g.
`wikitext` with name `wikitext-2-raw-v1`).
"""

from __future__ import annotations

from pathlib import Path

from datasets import load_dataset
from transformers import PreTrainedTokenizerBase

from ryot_ray.config import CorpusConfig

_LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json"}


def load_texts(corpus: CorpusConfig) -> list[str]:
    path = Path(corpus.path)
    builder = _LOCAL_BUILDERS.get(path.suffix)
    if builder and path.is_file():
        dataset = load_dataset(builder, data_files=str(path), split=corpus.split)
    elif builder:
        raise FileNotFoundError(f"corpus file {path} does not exist")
    else:
        dataset = load_dataset(corpus.path, corpus.name, split=corpus.split)
    if corpus.text_field not in dataset.column_names:
        raise KeyError(
            f"corpus {corpus.path} has no field {corpus.text_field!r} "
            f"(fields: {', '.join(dataset.column_names)})"
        )
    return [text for text in dataset[corpus.text_field] if text and text.strip()]


def pack_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, max_blocks: int
) -> list[list[int]]:
    """Concatenate the documents (each ended by EOS) and cut full blocks of `block_size`."""
    stream: list[int] = []
    needed = block_size * max_blocks
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= needed:
            break
    count = min(len(stream) // block_size, max_blocks)
    return [stream[i * block_size : (i + 1) * block_size] for i in range(count)]
