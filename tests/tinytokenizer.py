"""Real sentencepiece ``tokenizer.model`` files for tiny test models, trained in a fraction of
a second on a few lines of English and Chinese with sentencepiece's own trainer (LLaMA's
settings: BPE, byte fallback, digits split, <unk> 0, <s> 1, </s> 2)."""

from __future__ import annotations

import functools
import io

LINES = (
    "hello world, this is a small test of a tiny tokenizer",
    "the quick brown fox jumps over the lazy dog 12345",
    "llama models run on your own machine with llama.cpp and ollama",
    "你好世界，这是一个测试。",  # noqa: RUF001
    "我们的模型可以说中文，也可以说英文。",  # noqa: RUF001
    "中文词表扩展后的模型需要新的分词器",
)
# Every piece a byte-fallback model needs: 3 specials, 256 bytes, the lines' characters.
BYTE_FALLBACK_VOCAB = 400


@functools.cache
def tokenizer_model(vocab_size: int = BYTE_FALLBACK_VOCAB, byte_fallback: bool = True) -> bytes:
    """A trained sentencepiece model's bytes (``byte_fallback`` False allows under 260
    pieces, English lines only)."""
    import sentencepiece

    lines = LINES if byte_fallback else tuple(line for line in LINES if line.isascii())
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=byte_fallback,
        character_coverage=1.0,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return model.getvalue()
