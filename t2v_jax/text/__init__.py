"""Text conditioning: the T5 encoder, its tokenizers, checkpoint loading and the embedding cache."""

from t2v_jax.text.cache import EmbeddingCache, encode_captions, save_embedding_cache
from t2v_jax.text.convert import CheckpointError
from t2v_jax.text.encoder import TextEncoder, load_t5
from t2v_jax.text.t5 import T5Config, T5Encoder
from t2v_jax.text.tokenizer import ByteTokenizer, HFT5Tokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "CheckpointError",
    "EmbeddingCache",
    "HFT5Tokenizer",
    "T5Config",
    "T5Encoder",
    "TextEncoder",
    "encode_captions",
    "load_t5",
    "load_tokenizer",
    "save_embedding_cache",
]
