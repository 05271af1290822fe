"""Sentences: a text file with one sentence a line, as token sequences (``--tokens char|word``).

Words are split on whitespace, characters taken one by one (spaces included). The vocabulary is
built on the training split only, most frequent first (``--vocab-size`` keeps the most frequent N,
counting the specials), and saved with the run; tokens it lacks become ``<unk>``. Every sentence
ends with ``<eos>``; sentences are padded to the longest training sentence (``--max-len`` caps it,
cutting longer ones) and the padding is masked out of every loss.

An example is (T, 1) token ids stored as float32 (exact below 2^24) with a (T, 1) mask, so
batches move, slice and checkpoint like any other data; the models embed the ids.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, UsageError

TOKENIZERS = ("char", "word")
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)


def tokenize(line: str, tokens: str) -> list[str]:
    return line.split() if tokens == "word" else list(line)


def detokenize(toks: list[str], tokens: str) -> str:
    return " ".join(toks) if tokens == "word" else "".join(toks)


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; --tokens reads a text file with one sentence a line") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"{path} has no lines of text; give a file with one sentence a line")
    return lines


def looks_numeric(lines: list[str]) -> bool:
    """True when (nearly) every line is numbers and separators: a table or series, not text."""
    def numeric(ln: str) -> bool:
        cells = ln.replace(",", " ").replace(";", " ").replace("\t", " ").split()
        try:
            [float(c) for c in cells]
            return bool(cells)
        except ValueError:
            return False
    sample = lines[:200]
    return sum(numeric(ln) for ln in sample) >= 0.9 * len(sample)


def build_vocab(sentences: list[list[str]], vocab_size: int | None = None) -> list[str]:
    counts = Counter(t for s in sentences for t in s if t not in SPECIALS)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if vocab_size is not None:
        words = words[:max(0, vocab_size - len(SPECIALS))]
    return [*SPECIALS, *words]


def encode(sentences: list[list[str]], vocab: list[str], t: int) -> tuple[np.ndarray, np.ndarray, int]:
    """ids (N, t) and mask (N, t) of the sentences with <eos> appended, cut at t; how many were cut."""
    index = {w: i for i, w in enumerate(vocab)}
    unk, eos = index[UNK], index[EOS]
    ids = np.zeros((len(sentences), t), np.int64)
    mask = np.zeros((len(sentences), t), np.float32)
    cut = 0
    for i, s in enumerate(sentences):
        row = [index.get(w, unk) for w in s] + [eos]
        if len(row) > t:
            row, cut = row[:t], cut + 1
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask, cut


def load_text_data(source: str | Path, *, tokens: str, val_fraction: float = 0.1, test_fraction: float = 0.1,
                   seed: int = 0, vocab_size: int | None = None, max_len: int | None = None):
    """Sentences of a text file as ``Data`` (see the module docstring): spec (T, 1) kind "tokens"
    with ``vocab_size``; source["vocab"] the token list (index = id)."""
    from .batch import Batch
    from .datasets import Data, _carve, _count
    from .spec import DataSpec

    if tokens not in TOKENIZERS:
        raise UsageError(f"--tokens must be one of {', '.join(TOKENIZERS)}, got {tokens!r}")
    if vocab_size is not None and vocab_size <= len(SPECIALS):
        raise UsageError(f"--vocab-size must be more than {len(SPECIALS)} (the specials {', '.join(SPECIALS)}), got {vocab_size}")
    if max_len is not None and max_len < 1:
        raise UsageError(f"--max-len must be a positive integer, got {max_len}")
    p = Path(source).expanduser()
    if p.is_dir():
        raise DataError(f"{p} is a folder; --tokens reads a text file with one sentence a line")
    lines = read_lines(p)
    if looks_numeric(lines):
        raise UsageError(f"{p} holds numbers, not sentences: --tokens is for text; drop --tokens to read it as a "
                         "table, or add --window to read it as a series")
    sents = [tokenize(ln, tokens) for ln in lines]
    n = len(sents)
    rng = np.random.default_rng(seed % 2**64)
    (tr, _), (te, _), (va, _) = _carve((np.arange(n), None), [_count(test_fraction, n), _count(val_fraction, n)], rng)
    if not len(tr):
        raise DataError(f"{p}: too few lines ({n}) to split")
    vocab = build_vocab([sents[i] for i in tr], vocab_size)
    t = max(len(sents[i]) for i in tr) + 1
    if max_len is not None:
        t = min(t, max_len)
    splits, cut = {}, 0
    for name, rows in (("train", tr), ("val", va), ("test", te)):
        ids, mask, c = encode([sents[i] for i in rows], vocab, t)
        cut += c
        splits[name] = Batch(torch.from_numpy(ids.astype(np.float32))[..., None],
                             mask=torch.from_numpy(mask)[..., None])
    train_tokens = int(splits["train"].mask.sum())
    unk_share = float((splits["train"].x == vocab.index(UNK)).logical_and(splits["train"].mask > 0).sum()) / max(1, train_tokens)
    record: dict[str, Any] = {"kind_of_source": "text", "source": str(p.resolve()), "kind": "tokens", "tokens": tokens,
                              "vocab": vocab, "max_len": t, "cut_sentences": cut, "train_tokens": train_tokens,
                              "train_unk_share": unk_share, "seed": seed, "val_fraction": val_fraction,
                              "test_fraction": test_fraction, "standardize": None, "classes": None}
    spec = DataSpec((t, 1), "tokens", vocab_size=len(vocab))
    return Data(spec, splits["train"], splits["val"], splits["test"], record)


def load_text_inputs(path: str | Path, spec: Any, source: dict[str, Any]):
    """NEW sentences (a text file, one a line) for a text run: tokenised like its training data and
    coded with its vocabulary (unknown words as <unk>), cut at its length. Returns a Batch (ids, mask)."""
    from .batch import Batch

    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{p} is a folder; give a text file with one sentence a line")
    lines = read_lines(p)
    ids, mask, _ = encode([tokenize(ln, source["tokens"]) for ln in lines], source["vocab"], spec.shape[0])
    return Batch(torch.from_numpy(ids.astype(np.float32))[..., None], mask=torch.from_numpy(mask)[..., None])


def ids_to_text(ids: Any, mask: Any, vocab: list[str], tokens: str) -> list[str]:
    """Sentences from ids (N, T[, 1]): up to the first <eos> (or the mask's end), specials dropped."""
    a = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids).reshape(len(ids), -1).astype(np.int64)
    m = None if mask is None else np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).reshape(a.shape)
    out = []
    for i, row in enumerate(a):
        toks = []
        for j, k in enumerate(row):
            if m is not None and m[i, j] == 0:
                break
            w = vocab[k] if 0 <= k < len(vocab) else UNK
            if w == EOS:
                break
            if w != PAD:
                toks.append(w)
        out.append(detokenize(toks, tokens))
    return out
