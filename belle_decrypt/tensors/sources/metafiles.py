"""Meta's LLaMA download, its small files: ``params.json``, the checklists, the tokenizer's
place, the size folders, and the names of Meta's tensors (docs/FORMAT.md section 8).

:mod:`~belle_decrypt.tensors.sources.meta` reads the weights with these; nothing here maps a
weight file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle_decrypt.checks.keyid import META_SHARD_RE
from belle_decrypt.checks.manifest import ManifestEntry
from belle_decrypt.ground.errors import InputError
from belle_decrypt.tensors.listed import Listed

PARAMS, CHECKLIST = "params.json", "checklist.chk"
FIRST_FILE = "consolidated.00.pth"
# LLaMA-2's params.json says norm_eps 1e-05 (LLaMA-1: 1e-06).
LLAMA2_NORM_EPS = 1e-05
TOKENIZER, TOKENIZER_CHECKLIST = "tokenizer.model", "tokenizer_checklist.chk"
SHARD_RE = META_SHARD_RE
ROPE_FREQS = "rope.freqs"
LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# Meta's name (within a layer, or at the top) -> HF name and the dimension its slices are
# joined on (None: replicated, the same in every file).
LAYER_PARTS: dict[str, tuple[str, int | None]] = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
TOP_PARTS: dict[str, tuple[str, int | None]] = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 1),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}
POSITIONS = {1: 2048, 2: 4096}
LLAMA1_VOCAB = 32000
# Published SHA-256 of Meta's LLaMA-1 files (Chinese-LLaMA-Alpaca's SHA256.md), by the
# model's width, layers and number of files, then the file's number.
PUBLISHED_SHA256: dict[tuple[int, int, int], tuple[str, ...]] = {
    (4096, 32, 1): ("700df0d3013b703a806d2ae7f1bfb8e59814e3d06ae78be0c66368a50059f33d",),
    (5120, 40, 2): (
        "745bf4e29a4dd6f411e72976d92b452da1b49168a4f41c951cfcc8051823cf08",
        "d5ccbcc465c71c0de439a5aeffebe8344c68a519bce70bc7f9f92654ee567085",
    ),
    (6656, 60, 4): (
        "e23294a58552d8cdec5b7e8abb87993b97ea6eced4178ff2697c02472539d067",
        "4e077b7136c7ae2302e954860cf64930458d3076fcde9443f4d0e939e95903ff",
        "24a87f01028cbd3a12de551dcedb712346c0b5cbdeff1454e0ddf2df9b675378",
        "1adfcef71420886119544949767f6a56cb6339b4d5fcde755d80fe68b49de93b",
    ),
}
PUBLISHED = "docs/FORMAT.md section 8"
"""Where that table is stated: the source of its manifest entries, for messages."""
Fail = Callable[[str, Path], InputError]
"""A folder's ``fail``: a one-line InputError naming its role and the file."""


@dataclass(frozen=True)
class Params:
    """The figures of ``params.json`` a conversion needs."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    multiple_of: int
    ffn_dim_multiplier: float | None

    @property
    def head_dim(self) -> int:
        """Rows of q (and k) per attention head."""
        return self.dim // self.n_heads

    @property
    def intermediate_size(self) -> int:
        """The feed-forward width Meta's model code computes from these figures."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * -(-hidden // self.multiple_of)

    def config(self, version: int, vocab: int, dtype: str) -> dict[str, Any]:
        """The config.json a Hugging Face conversion of this model has."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.n_heads,
            "num_hidden_layers": self.n_layers,
            "num_key_value_heads": self.n_kv_heads,
            "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": POSITIONS[version],
            "vocab_size": vocab,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": dtype,
            "use_cache": True,
        }


def hf_name(name: str) -> tuple[str, int | None] | None:
    """The HF name of Meta's tensor ``name`` and its join dimension (None: not LLaMA's)."""
    if name in TOP_PARTS:
        return TOP_PARTS[name]
    match = LAYER_RE.match(name)
    if match is not None and match.group(2) in LAYER_PARTS:
        hf, dim = LAYER_PARTS[match.group(2)]
        return f"model.layers.{match.group(1)}.{hf}", dim
    return None


def expected_shapes(p: Params, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every HF tensor's joined shape as params.json's figures give it."""
    kv = p.n_kv_heads * p.head_dim
    wanted: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, p.dim),
        "model.norm.weight": (p.dim,),
        "lm_head.weight": (vocab, p.dim),
    }
    sizes = {
        "self_attn.q_proj.weight": (p.dim, p.dim),
        "self_attn.k_proj.weight": (kv, p.dim),
        "self_attn.v_proj.weight": (kv, p.dim),
        "self_attn.o_proj.weight": (p.dim, p.dim),
        "mlp.gate_proj.weight": (p.intermediate_size, p.dim),
        "mlp.up_proj.weight": (p.intermediate_size, p.dim),
        "mlp.down_proj.weight": (p.dim, p.intermediate_size),
        "input_layernorm.weight": (p.dim,),
        "post_attention_layernorm.weight": (p.dim,),
    }
    for n in range(p.n_layers):
        wanted.update({f"model.layers.{n}.{k}": v for k, v in sizes.items()})
    return wanted


def read_params(path: Path, fail: Fail) -> Params:
    """``params.json`` read and checked (Llama 3's refused)."""
    if not path.is_file():
        raise fail(
            f"has no {PARAMS}: pass Meta's size folder (7B/, llama-2-13b/, ...) or the "
            "download's root with --size",
            path,
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read it ({exc}); download it again", path) from exc
    if not isinstance(doc, dict):
        raise fail("is not a JSON object; download it again", path)
    if doc.get("vocab_size") == 128256 or doc.get("rope_theta") == 500000.0:
        raise fail(
            "is Llama 3's (a tiktoken vocabulary of 128256): not LLaMA-1/2, which is what "
            "these recipes and conversions are for",
            path,
        )
    try:
        dim, heads = _whole(doc, "dim"), _whole(doc, "n_heads")
        multiplier = doc.get("ffn_dim_multiplier")
        params = Params(
            dim=dim,
            n_layers=_whole(doc, "n_layers"),
            n_heads=heads,
            n_kv_heads=_whole(doc, "n_kv_heads") if "n_kv_heads" in doc else heads,
            norm_eps=float(doc["norm_eps"]),
            multiple_of=_whole(doc, "multiple_of"),
            ffn_dim_multiplier=float(multiplier) if multiplier is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(
            f"lacks a usable {exc} (dim, n_layers, n_heads, norm_eps and multiple_of must be "
            "given): not LLaMA's; download it again",
            path,
        ) from exc
    if dim % heads or heads % params.n_kv_heads or params.head_dim % 2:
        raise fail(
            f"dim {dim}, n_heads {heads} and n_kv_heads {params.n_kv_heads} do not divide "
            "into whole heads of an even size: not LLaMA's; download it again",
            path,
        )
    return params


def refuse_llama2_params(path: Path, fail: Fail) -> None:
    """Refuse a params.json that says LLaMA-2 (its norm_eps) as a base of BiLLa, which reads
    nothing else of it (a missing one is no refusal: a lone checkpoint has none)."""
    if not path.is_file():
        return
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read {PARAMS}: {exc}", path) from exc
    if isinstance(doc, dict) and doc.get("norm_eps") == LLAMA2_NORM_EPS:
        raise fail(
            f"{PARAMS} says norm_eps 1e-05: this is LLaMA-2, but BiLLa was made from LLaMA-1 "
            "(1e-06); pass LLaMA-1 7B",
            path,
        )


def check_small_files(
    folder: Path, tokenizer: Path, checklist: dict[str, ManifestEntry], fail: Fail
) -> None:
    """params.json against checklist.chk and tokenizer.model against its checklist."""
    if PARAMS in checklist:
        _check_md5(folder / PARAMS, checklist[PARAMS], fail)
    tokenizer_list = read_checklist(tokenizer.parent / TOKENIZER_CHECKLIST, fail)
    if TOKENIZER in tokenizer_list:
        _check_md5(tokenizer, tokenizer_list[TOKENIZER], fail)


def _check_md5(path: Path, entry: ManifestEntry, fail: Fail) -> None:
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != entry.digest:
        raise fail(
            f"md5 {digest} differs from {entry.digest} ({entry.where}): the download is "
            "damaged; download it again (or pass --no-verify)",
            path,
        )


def find_tokenizer(folder: Path, fail: Fail) -> Path:
    """``tokenizer.model`` beside the size folder's files or one level up (a sentencepiece
    model, not Llama 3's tiktoken file)."""
    for place in (folder, folder.parent):
        candidate = place / TOKENIZER
        if candidate.is_file():
            with open(candidate, "rb") as handle:
                head = handle.read(1)
            if head != b"\x0a":  # a sentencepiece model is a protobuf starting with field 1
                raise fail(
                    "is not a sentencepiece model (Llama 3's tiktoken vocabulary?): only "
                    "LLaMA-1/2 are supported",
                    candidate,
                )
            return candidate
    raise fail(
        f"no {TOKENIZER} here or one level up: Meta's download has it beside the size "
        "folders; put it there",
        folder / TOKENIZER,
    )


def read_checklist(path: Path, fail: Fail) -> dict[str, ManifestEntry]:
    """Each file's md5 entry in an md5sum-style checklist (empty when there is none)."""
    if not path.is_file():
        return {}
    listed = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", fields[0]):
            raise fail(f"line {number} is not an md5sum line; download it again", path)
        name = fields[1].removeprefix("*").removeprefix("./")
        listed[name] = ManifestEntry(name, "md5", fields[0].lower(), str(path), number)
    return listed


def listed_checksums(
    files: tuple[Path, ...], checklist: dict[str, ManifestEntry], published: tuple[str, ...]
) -> list[Listed]:
    """Each weight file's checksums to check while it is read: checklist.chk's md5, and
    Meta's ``published`` SHA-256 (one per file, in order; empty: none known)."""
    listed = []
    for number, file in enumerate(files):
        entries = [checklist[file.name]] if file.name in checklist else []
        if published:
            entries.append(ManifestEntry(file.name, "sha256", published[number], PUBLISHED, 8))
        if entries:
            listed.append((file, tuple(entries)))
    return listed


def published_sha256(params: Params, version: int, vocab: int, files: int) -> tuple[str, ...]:
    """Meta's published SHA-256 of this model's files, when it is one of the table's."""
    if version != 1 or vocab != LLAMA1_VOCAB:
        return ()
    return PUBLISHED_SHA256.get((params.dim, params.n_layers, files), ())


def size_folder(root: Path, size: str, role: str) -> Path:
    """The folder under a download's ``root`` that ``--size`` names, whatever its spelling
    (``13B``, ``llama-2-13b``; 30B and 33B are one size)."""
    if not root.is_dir():
        raise InputError(f"({role}) no such folder; pass Meta's download folder", root)
    wanted = _size_key(size)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    found = [p for p in folders if _size_key(p.name) in (wanted, size.lower())]
    if len(found) == 1:
        return found[0]
    if not found:
        names = ", ".join(p.name for p in folders) or "none"
        raise InputError(
            f"({role}) --size {size}: no such size folder here (folders: {names}); pass one "
            "of them",
            root,
        )
    names = ", ".join(p.name for p in found)
    raise InputError(f"({role}) --size {size} names {names}; pass the folder's full name", root)


def _size_key(name: str) -> str:
    key = name.lower().removeprefix("llama-2-").removeprefix("llama2-").removeprefix("llama-")
    return "30b" if key == "33b" else key


def _whole(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(key)
    return value
