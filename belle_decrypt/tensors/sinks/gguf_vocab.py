"""The tokenizer a llama GGUF carries, read from ``tokenizer.model`` and the files beside it.

llama.cpp's LLaMA tokenizer is sentencepiece's: every piece with its score and type, the
special ids, then the pieces ``added_tokens.json`` appends (Alpaca's ``[PAD]``). The token
count must equal the embedding's rows or llama.cpp refuses the file, so rows with no piece
(extra rows a release added without naming them) get placeholder tokens ``[PAD<id>]``, as
llama.cpp's own converter writes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from belle_decrypt.ground.errors import InputError

TOKENIZER_MODEL = "tokenizer.model"
ADDED_TOKENS = "added_tokens.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# gguf's TokenType values (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# Scores llama.cpp's converter gives pieces sentencepiece does not know.
ADDED_SCORE = -1000.0
PLACEHOLDER_SCORE = -1000.0


@dataclass
class Vocab:
    """Tokens, scores and types (one per embedding row), special ids and add-bos/eos flags."""

    tokens: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)
    add_bos: bool = True
    add_eos: bool = False
    source: Path | None = None

    def append(self, token: str, score: float, kind: int) -> None:
        """One more row."""
        self.tokens.append(token)
        self.scores.append(score)
        self.types.append(kind)


def read_vocab(files: Mapping[str, Path | bytes], rows: int, folder: Path) -> Vocab:
    """The vocabulary of the tokenizer ``files`` (by name: a file's path, or bytes a recipe
    made, named as in ``folder`` by a refusal) for an embedding of ``rows`` rows.

    Refused (exit 2): no ``tokenizer.model``, one sentencepiece cannot read, or more pieces
    than rows (the tokenizer belongs to another model).
    """
    from sentencepiece import SentencePieceProcessor

    entry = files[TOKENIZER_MODEL]
    path = entry if isinstance(entry, Path) else folder / TOKENIZER_MODEL
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(entry if isinstance(entry, bytes) else path.read_bytes())
    except OSError as exc:
        raise InputError(
            f"cannot read the tokenizer: {exc.strerror or exc}; a GGUF file carries its "
            "tokenizer, so put the release's tokenizer.model in this folder",
            path,
        ) from exc
    except RuntimeError as exc:
        raise InputError(
            "is not a sentencepiece model (a git-lfs pointer or a damaged download?); "
            "download tokenizer.model again",
            path,
        ) from exc
    vocab = Vocab(source=path)
    for token_id in range(processor.GetPieceSize()):
        vocab.append(
            processor.IdToPiece(token_id), processor.GetScore(token_id), _kind(processor, token_id)
        )
    for _, piece in _added_tokens(files, folder, len(vocab.tokens)):
        vocab.append(piece, ADDED_SCORE, USER_DEFINED)
    if len(vocab.tokens) > rows:
        raise InputError(
            f"the tokenizer has {len(vocab.tokens)} tokens but the embedding only {rows} rows: "
            "it belongs to another model; use the release's own tokenizer files",
            path,
        )
    while len(vocab.tokens) < rows:
        vocab.append(f"[PAD{len(vocab.tokens)}]", PLACEHOLDER_SCORE, UNUSED)
    for name, token_id in (
        ("bos", processor.bos_id()),
        ("eos", processor.eos_id()),
        ("unk", processor.unk_id()),
        ("pad", processor.pad_id()),
    ):
        if 0 <= token_id < rows:
            vocab.special[name] = token_id
    _apply_tokenizer_config(files, folder, vocab)
    return vocab


def _kind(processor: Any, token_id: int) -> int:
    """A piece's token type, as llama.cpp's converter decides it."""
    if processor.IsByte(token_id):
        return BYTE
    if processor.IsUnused(token_id):
        return UNUSED
    if processor.IsControl(token_id):
        return CONTROL
    if processor.IsUnknown(token_id):
        return UNKNOWN
    return NORMAL


def _added_tokens(
    files: Mapping[str, Path | bytes], folder: Path, first: int
) -> list[tuple[int, str]]:
    """The pieces ``added_tokens.json`` appends, in id order from ``first``; ids inside the
    sentencepiece vocabulary rename nothing and are skipped, a gap is refused."""
    path, doc = _json(files, folder, ADDED_TOKENS)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in doc.items()
    ):
        raise InputError("is not an object of token: id pairs; download it again", path)
    added = sorted((token_id, piece) for piece, token_id in doc.items() if token_id >= first)
    expected = list(range(first, first + len(added)))
    if [token_id for token_id, _ in added] != expected:
        raise InputError(
            f"its new ids {[token_id for token_id, _ in added]} do not follow the "
            f"tokenizer's {first} pieces without a gap; download it again",
            path,
        )
    return added


def _apply_tokenizer_config(files: Mapping[str, Path | bytes], folder: Path, vocab: Vocab) -> None:
    """``add_bos_token`` / ``add_eos_token`` and a ``[PAD]``-style pad token, where given."""
    _, doc = _json(files, folder, TOKENIZER_CONFIG)
    if not isinstance(doc, dict):
        return
    for key, attr in (("add_bos_token", "add_bos"), ("add_eos_token", "add_eos")):
        if isinstance(doc.get(key), bool):
            setattr(vocab, attr, doc[key])
    pad = doc.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    if isinstance(pad, str) and pad in vocab.tokens:
        vocab.special["pad"] = vocab.tokens.index(pad)


def _json(files: Mapping[str, Path | bytes], folder: Path, name: str) -> tuple[Path, Any]:
    """The file ``name``'s path (as a refusal names it) and its JSON document (None when
    absent); refused when unreadable."""
    entry = files.get(name)
    path = entry if isinstance(entry, Path) else folder / name
    if entry is None:
        return path, None
    try:
        text = entry.decode() if isinstance(entry, bytes) else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}; download it again", path) from exc
    try:
        return path, json.loads(text)
    except ValueError as exc:
        raise InputError(f"is not valid JSON ({exc}); download it again", path) from exc
