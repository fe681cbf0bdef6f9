"""Token batches for validation runs, with no tokenizer download.

Sources (the `--data` option):
  * none: uniformly random token ids (memory does not depend on the values),
  * "sample": the short text shipped in capacity/data/sample.txt,
  * a path to a user's .txt file (the whole text) or .jsonl file (the "text" field of
    each line, or its first string value).
Text becomes tokens byte by byte (UTF-8), each byte taken modulo the vocabulary size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "sample.txt"

# A data file larger than this is cut: a validation run reads at most steps·batch·seq bytes.
MAX_DATA_BYTES = 64 * 2**20


def read_text(path: str | Path) -> str:
    """The text of a .txt or .jsonl file. ValueError if unreadable or empty."""
    p = SAMPLE_PATH if str(path) == "sample" else Path(path)
    try:
        if not p.is_file():
            raise ValueError(f"data: no file at {str(p)!r}")
        with p.open("rb") as f:
            raw = f.read(MAX_DATA_BYTES).decode("utf-8", errors="replace")
    except OSError as err:   # PermissionError and the like
        raise ValueError(f"data: cannot read {str(p)!r} ({err.strerror or type(err).__name__})") from None
    if p.suffix.lower() == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"data: {p.name} line {number} is not valid JSON") from None
            except RecursionError:
                raise ValueError(f"data: {p.name} line {number} is nested too deeply") from None
            texts.append(_text_of(record))
        text = "\n".join(t for t in texts if t)
    else:
        text = raw
    if not text:
        raise ValueError(f"data: {p.name} holds no text")
    return text


def _text_of(record) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        for value in record.values():
            if isinstance(value, str):
                return value
    return ""


def byte_tokens(text: str, vocab_size: int) -> torch.Tensor:
    """One token per UTF-8 byte, modulo the vocabulary size (a 1-D int64 tensor)."""
    data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    return data.long() % vocab_size


class Batches:
    """batch(step) -> (batch, seq) int64 ids on the CPU, the same for the same step."""

    def __init__(self, vocab_size: int, batch: int, seq: int, data: str | Path | None = None,
                 seed: int = 0):
        self.vocab_size, self.batch_size, self.seq = vocab_size, batch, seq
        self.seed = seed
        self.stream = None if data is None else byte_tokens(read_text(data), vocab_size)

    def batch(self, step: int) -> torch.Tensor:
        n = self.batch_size * self.seq
        if self.stream is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)   # a prime stride
            return torch.randint(0, self.vocab_size, (self.batch_size, self.seq), generator=g)
        # Consecutive windows of the stream, repeating it when it runs out.
        start = (step * n) % len(self.stream)
        idx = (torch.arange(n) + start) % len(self.stream)
        return self.stream[idx].view(self.batch_size, self.seq).clone()
