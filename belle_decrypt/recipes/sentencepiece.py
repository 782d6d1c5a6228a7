"""LLaMA's sentencepiece ``tokenizer.model`` as a ``tokenizer.json`` transformers 5 loads.

transformers 5 loads a folder holding only ``tokenizer.model`` by converting it, and that
conversion needs the ``protobuf`` package; with ``tokenizer.json`` beside it, it needs
nothing more. The model file is a protobuf message; the few fields needed here (each piece's
text and type, and the model type) are read with a small wire-format reader. The vocabulary is
the pieces in id order; the BPE merges are, for each piece in id order, every split into two
pieces of the vocabulary, shortest left part first: the rule transformers applies to a
sentencepiece BPE model (``generate_merges``). docs/FORMAT.md section 8 says more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from belle_decrypt.ground.errors import InputError

# sentencepiece's piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2
SPACE = "\u2581"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of each field of one protobuf message."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, data[at : at + 8]
            at += 8
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("truncated field")
            yield number, wire, data[at : at + length]
            at += length
        elif wire == 5:
            yield number, wire, data[at : at + 4]
            at += 4
        else:
            raise ValueError(f"wire type {wire}")


def read_pieces(model: bytes) -> tuple[list[tuple[str, int]], int]:
    """Each piece's text and type in id order, and the model type (2: BPE)."""
    pieces: list[tuple[str, int]] = []
    model_type = 1
    for number, _, value in _fields(model):
        if number == 1 and isinstance(value, bytes):
            text, kind = "", NORMAL
            for field, _, inner in _fields(value):
                if field == 1 and isinstance(inner, bytes):
                    text = inner.decode("utf-8")
                elif field == 3 and isinstance(inner, int):
                    kind = inner
            pieces.append((text, kind))
        elif number == 2 and isinstance(value, bytes):
            for field, _, inner in _fields(value):
                if field == 3 and isinstance(inner, int):
                    model_type = inner
    return pieces, model_type


def merges_of(vocab: dict[str, int], skip: set[str]) -> list[list[str]]:
    """The BPE merges: for each piece in id order, its splits into two vocabulary pieces."""
    merges = []
    for piece in sorted(vocab, key=vocab.__getitem__):
        if piece in skip:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and left not in skip and right not in skip:
                merges.append([left, right])
    return merges


def tokenizer_json(model: bytes) -> bytes:
    """The ``tokenizer.json`` of LLaMA's sentencepiece BPE ``model`` (bos added, as LLaMA's)."""
    try:
        pieces, model_type = read_pieces(model)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"tokenizer.model is not a sentencepiece model ({exc})") from exc
    if model_type != BPE or not pieces:
        raise InputError("tokenizer.model is not a sentencepiece BPE model: not LLaMA's")
    vocab = {text: number for number, (text, _) in enumerate(pieces)}
    special = {text for text, kind in pieces if kind in (UNKNOWN, CONTROL)}
    unk = next((text for text, kind in pieces if kind == UNKNOWN), "<unk>")
    bos = "<s>" if "<s>" in vocab else None
    added = [
        {
            "id": number,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": kind != USER_DEFINED,
        }
        for number, (text, kind) in enumerate(pieces)
        if kind in (UNKNOWN, CONTROL, USER_DEFINED)
    ]
    single: list[dict[str, object]] = [{"Sequence": {"id": "A", "type_id": 0}}]
    pair: list[dict[str, object]] = [*single, {"Sequence": {"id": "B", "type_id": 1}}]
    specials: dict[str, object] = {}
    if bos is not None:
        start: dict[str, object] = {"SpecialToken": {"id": bos, "type_id": 0}}
        single = [start, *single]
        pair = [start, pair[0], {"SpecialToken": {"id": bos, "type_id": 1}}, pair[1]]
        specials = {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": SPACE,
            "prepend_scheme": "first",
            "split": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": specials,
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges_of(vocab, special),
        },
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
