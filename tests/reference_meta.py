"""Tiny Meta LLaMA downloads, and independent references for what `convert` must make of them.

A model is made whole (Meta's names, Meta's dtype), then written as Meta's model-parallel code
slices it into N ``consolidated.NN.pth`` files (docs/FORMAT.md section 8: column-parallel
weights split on rows, row-parallel ones and the embedding on columns, norms replicated),
with ``params.json``, ``checklist.chk`` and a real sentencepiece ``tokenizer.model`` one level
up. The references work on the whole tensors: the HF state dict by the section's table and
permutation formula, and a forward pass of Meta's model with its interleaved rotary.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

StateDict = dict[str, torch.Tensor]
DIM, LAYERS, VOCAB, MULTIPLE_OF = 64, 2, 320, 32
# Meta's names split on rows (column-parallel), on columns (row-parallel and the embedding).
ROWS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
COLUMNS = ("attention.wo", "feed_forward.w2")
CORPUS = "\n".join(
    f"the quick brown fox {i} jumps over the lazy dog; llama alpaca vicuna {i * 7} ünï 你好"
    for i in range(300)
)


@dataclass(frozen=True)
class Tiny:
    """One tiny model's figures (params.json) and dtype."""

    version: int
    n_heads: int
    n_kv_heads: int
    dtype: torch.dtype

    @property
    def head_dim(self) -> int:
        return DIM // self.n_heads

    @property
    def params(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "dim": DIM,
            "multiple_of": MULTIPLE_OF,
            "n_heads": self.n_heads,
            "n_layers": LAYERS,
            "norm_eps": 1e-06 if self.version == 1 else 1e-05,
            "vocab_size": -1,
        }
        if self.n_kv_heads != self.n_heads:
            doc["n_kv_heads"] = self.n_kv_heads
            doc["ffn_dim_multiplier"] = 1.3
        return doc

    @property
    def hidden(self) -> int:
        """The feed-forward width, as Meta's FeedForward computes it."""
        hidden = int(2 * 4 * DIM / 3)
        if self.n_kv_heads != self.n_heads:
            hidden = int(1.3 * hidden)
        return MULTIPLE_OF * ((hidden + MULTIPLE_OF - 1) // MULTIPLE_OF)


LLAMA1 = Tiny(1, 8, 8, torch.float16)


def llama2(shards: int) -> Tiny:
    """A LLaMA-2 model with grouped k/v heads that ``shards`` files can hold whole heads of."""
    return Tiny(2, 16, 8, torch.bfloat16) if shards == 8 else Tiny(2, 8, 4, torch.bfloat16)


def tiny_model(kind: str, files: int) -> Tiny:
    """The tiny LLaMA-1 model, or the LLaMA-2 one (grouped k/v) for ``files`` files."""
    return LLAMA1 if kind == "llama1" else llama2(files)


def whole_model(tiny: Tiny, seed: int = 0) -> StateDict:
    """Random weights with Meta's names, in Meta's dtype (norms near 1, like LLaMA's)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(tiny.dtype)

    kv = tiny.n_kv_heads * tiny.head_dim
    state = {"tok_embeddings.weight": rand(VOCAB, DIM, scale=1.0)}
    for n in range(LAYERS):
        layer = f"layers.{n}."
        state[layer + "attention.wq.weight"] = rand(DIM, DIM)
        state[layer + "attention.wk.weight"] = rand(kv, DIM)
        state[layer + "attention.wv.weight"] = rand(kv, DIM)
        state[layer + "attention.wo.weight"] = rand(DIM, DIM)
        state[layer + "feed_forward.w1.weight"] = rand(tiny.hidden, DIM)
        state[layer + "feed_forward.w2.weight"] = rand(DIM, tiny.hidden)
        state[layer + "feed_forward.w3.weight"] = rand(tiny.hidden, DIM)
        state[layer + "attention_norm.weight"] = (1 + rand(DIM, scale=0.1).float()).to(tiny.dtype)
        state[layer + "ffn_norm.weight"] = (1 + rand(DIM, scale=0.1).float()).to(tiny.dtype)
    state["norm.weight"] = (1 + rand(DIM, scale=0.1).float()).to(tiny.dtype)
    state["output.weight"] = rand(VOCAB, DIM)
    theta = 1.0 / (10000.0 ** (torch.arange(0, tiny.head_dim, 2).float() / tiny.head_dim))
    state["rope.freqs"] = theta
    return state


def slices(state: StateDict, shards: int) -> list[StateDict]:
    """Meta's model-parallel files of a whole model."""
    files: list[StateDict] = [{} for _ in range(shards)]
    for name, tensor in state.items():
        base = name.removesuffix(".weight").split(".", 2)[-1] if name.startswith("layers.") else ""
        if base in ROWS or name == "output.weight":
            parts = tensor.chunk(shards, dim=0)
        elif base in COLUMNS or name == "tok_embeddings.weight":
            parts = tensor.chunk(shards, dim=1)
        else:
            parts = tuple(tensor for _ in range(shards))
        for number, part in enumerate(parts):
            files[number][name] = part.clone()
    return files


def tokenizer_model(folder: Path) -> Path:
    """A sentencepiece BPE model made as LLaMA's is (byte fallback, no normalisation)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tok"),
        vocab_size=310,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return folder / "tok.model"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_download(
    root: Path, tiny: Tiny, shards: int, tokenizer: Path, name: str = "7B", seed: int = 0
) -> Path:
    """Meta's download: ``root/tokenizer.model`` and its checklist, ``root/name/`` with the
    files, params.json and checklist.chk. Returns the size folder."""
    folder = root / name
    folder.mkdir(parents=True)
    (root / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    (root / "tokenizer_checklist.chk").write_text(
        f"{md5(root / 'tokenizer.model')}  tokenizer.model\n"
    )
    for number, part in enumerate(slices(whole_model(tiny, seed), shards)):
        torch.save(part, folder / f"consolidated.{number:02d}.pth")
    (folder / "params.json").write_text(json.dumps(tiny.params))
    listed = sorted(p.name for p in folder.iterdir())
    (folder / "checklist.chk").write_text("".join(f"{md5(folder / n)}  {n}\n" for n in listed))
    return folder


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """docs/FORMAT.md section 8, Meta -> HF, on a whole tensor."""
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def reference_hf(state: StateDict, tiny: Tiny) -> StateDict:
    """The HF state dict of a whole Meta model, by section 8's table (rope.freqs dropped), in
    LLaMA's state-dict order."""
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"]}
    for n in range(LAYERS):
        meta, hf = f"layers.{n}.", f"model.layers.{n}."
        out[hf + "self_attn.q_proj.weight"] = permute(
            state[meta + "attention.wq.weight"], tiny.n_heads
        )
        out[hf + "self_attn.k_proj.weight"] = permute(
            state[meta + "attention.wk.weight"], tiny.n_kv_heads
        )
        out[hf + "self_attn.v_proj.weight"] = state[meta + "attention.wv.weight"]
        out[hf + "self_attn.o_proj.weight"] = state[meta + "attention.wo.weight"]
        out[hf + "mlp.gate_proj.weight"] = state[meta + "feed_forward.w1.weight"]
        out[hf + "mlp.down_proj.weight"] = state[meta + "feed_forward.w2.weight"]
        out[hf + "mlp.up_proj.weight"] = state[meta + "feed_forward.w3.weight"]
        out[hf + "input_layernorm.weight"] = state[meta + "attention_norm.weight"]
        out[hf + "post_attention_layernorm.weight"] = state[meta + "ffn_norm.weight"]
    out["model.norm.weight"] = state["norm.weight"]
    out["lm_head.weight"] = state["output.weight"]
    return out


def meta_logits(state: StateDict, tiny: Tiny, tokens: list[int]) -> torch.Tensor:
    """Meta's forward pass in float32 on Meta's own tensors: rotary on interleaved pairs
    (each pair a complex number, as Meta's ``apply_rotary_emb``), grouped k/v repeated."""
    w = {name: t.float() for name, t in state.items()}
    eps = float(tiny.params["norm_eps"])  # type: ignore[arg-type]
    hd, seq = tiny.head_dim, len(tokens)

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(seq).float(), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)

    def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [seq, heads, hd]
        pairs = torch.view_as_complex(x.reshape(seq, x.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(pairs * rotation[:, None, :]).reshape(x.shape)

    h = w["tok_embeddings.weight"][tokens]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for n in range(LAYERS):
        p = f"layers.{n}."
        x = norm(h, w[p + "attention_norm.weight"])
        q = (x @ w[p + "attention.wq.weight"].T).view(seq, tiny.n_heads, hd)
        k = (x @ w[p + "attention.wk.weight"].T).view(seq, tiny.n_kv_heads, hd)
        v = (x @ w[p + "attention.wv.weight"].T).view(seq, tiny.n_kv_heads, hd)
        q, k = rotate(q), rotate(k)
        repeat = tiny.n_heads // tiny.n_kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, DIM)
        h = h + attended @ w[p + "attention.wo.weight"].T
        x = norm(h, w[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(x @ w[p + "feed_forward.w1.weight"].T)
        up = x @ w[p + "feed_forward.w3.weight"].T
        h = h + (gate * up) @ w[p + "feed_forward.w2.weight"].T
    return norm(h, w["norm.weight"]) @ w["output.weight"].T
