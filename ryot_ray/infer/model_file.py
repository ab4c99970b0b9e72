"""The frozen model file: everything inference needs in one packed, aligned blob.

Layout: the magic `RYOTFRZ1`, the length of a JSON header (8 bytes, little endian), the
header, then every tensor at an offset aligned to 64 bytes (the first to a page). The
header holds the model's shape and layout (`model`), its tokenizer (the `tokenizers`
JSON and the special token ids) and, per tensor, its dtype, shape and offset. Loading
memory-maps the file: nothing is copied, the operating system pages weights in as they
are read, and several processes answering with one file share its pages.

Reading needs numpy only (no torch), so a process that answers prompts carries the
model, its KV cache and Python, and nothing else.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ryot_ray.atomic import write_atomic

MAGIC = b"RYOTFRZ1"
FORMAT = 2  # 2: bitnet blocks (norms as gains, relu², fp32 sub-norms)
ALIGN = 64
PAGE = 4096


class ModelFileError(ValueError):
    """A file that is not a frozen model of this format, or is damaged."""


@dataclass
class FrozenModel:
    model: dict  # shape, layout, eps, rope scaling, widths, tiles (see infer.freeze)
    tokenizer: dict  # {"json": the tokenizers JSON, "bos": id, "eos": id, "pad": id}
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a file)."""
        index, offset = {}, 0
        for name, array in self.arrays.items():
            offset = -(-offset // ALIGN) * ALIGN
            index[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
            offset += array.nbytes
        header = json.dumps({"format": FORMAT, "model": self.model, "tokenizer": self.tokenizer,
                             "tensors": index}).encode()
        start = -(-(len(MAGIC) + 8 + len(header)) // PAGE) * PAGE

        def write(handle) -> None:
            handle.write(MAGIC + struct.pack("<Q", len(header)) + header)
            handle.write(b"\0" * (start - len(MAGIC) - 8 - len(header)))
            written = 0
            for name, array in self.arrays.items():
                handle.write(b"\0" * (index[name]["offset"] - written))
                handle.write(np.ascontiguousarray(array).tobytes())
                written = index[name]["offset"] + array.nbytes

        write_atomic(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> FrozenModel:
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    raise ModelFileError(f"{path}: not a ryot-ray frozen model file")
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelFileError(f"{path}: cannot be read as a frozen model ({error})") from None
        if header.get("format") != FORMAT:
            raise ModelFileError(f"{path}: frozen model format {header.get('format')}, this ryot-ray reads {FORMAT}")
        start = -(-(len(MAGIC) + 8 + length) // PAGE) * PAGE
        blob = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for name, entry in header["tensors"].items():
            dtype = np.dtype(entry["dtype"])
            count = int(np.prod(entry["shape"], dtype=np.int64))
            begin = start + entry["offset"]
            if begin + count * dtype.itemsize > blob.size:
                raise ModelFileError(f"{path}: truncated (tensor {name} ends past the end of the file)")
            arrays[name] = blob[begin: begin + count * dtype.itemsize].view(dtype).reshape(entry["shape"])
        return cls(header["model"], header["tokenizer"], arrays)
