"""BERT-Large (Devlin et al. 2019): the encoder, its pooler, and optional task heads.

Inputs, each (batch, seq_len) integers: token ids, segment (token type) ids, and position ids. The
position ids are an input rather than generated inside (the Keras API here has no range layer);
feed `np.arange(seq_len)` on every row, which `position_ids(batch, seq_len)` builds.

Embeddings: word (vocab x hidden) + position (max_positions x hidden) + segment (segments x hidden),
summed, LayerNormalization (epsilon 1e-12), dropout. Each of the `layers` encoder layers is post-LN:
x = LN(x + Dropout(MHA(x, x))), x = LN(x + Dropout(Dense(hidden)(Dense(ffn, gelu)(x)))), with
`heads` heads of hidden/heads. The pooler is Dense(hidden, tanh) on the first token ([CLS]).
Attention has no padding mask: every sequence is taken as full length.

Outputs: the pooled vector (batch, hidden) when no head is asked for. Optional heads, off by default:
 - `classes=k`: a sequence classifier, Dense(k, softmax) on the pooled vector;
 - `mlm_head=True`: the masked-LM head, Dense(hidden, gelu), LayerNormalization(1e-12) and a softmax
   over the vocabulary per token. Its decoder is an untied Dense(vocab) with bias, since layers here
   cannot share weights (BERT ties it to the word embeddings): it adds hidden*hidden + hidden
   + 2*hidden + hidden*vocab + vocab weights. The model's outputs are then [mlm, classes] in that
   order, whichever are present.

Full size (the default, no head): vocab 30522, 512 positions, 2 segments, 24 layers, hidden 1024,
16 heads, FFN 4096: count_params() is 335,141,888, the published BERT-Large count with its pooler.
"""

from __future__ import annotations

import numpy as np

from unity_legion import keras

L = keras.layers


def position_ids(batch: int, seq_len: int) -> np.ndarray:
    """The position-ids input for a batch: 0..seq_len-1 on every row."""
    return np.broadcast_to(np.arange(seq_len, dtype=np.int64), (batch, seq_len)).copy()


def _first_token(x: keras.KerasTensor, seq_len: int, hidden: int, name: str) -> keras.KerasTensor:
    """x[:, 0, :] as (batch, hidden): split the sequence axis into the first token and the rest."""
    if seq_len == 1:
        return L.Reshape((hidden,), name=f"{name}_cls")(x)
    first, _ = L.Split([1, seq_len - 1], axis=1, name=f"{name}_split_cls")(x)
    return L.Reshape((hidden,), name=f"{name}_cls")(first)


def bert_large(vocab_size: int = 30522, max_positions: int = 512, segments: int = 2,
               seq_len: int = 512, layers: int = 24, hidden: int = 1024, heads: int = 16,
               ffn: int = 4096, dropout: float = 0.1, classes: int | None = None,
               mlm_head: bool = False, name: str = "bert") -> keras.Model:
    """Inputs [token_ids, segment_ids, position_ids], each (batch, seq_len) int64."""
    if hidden % heads:
        raise ValueError(f"bert_large: hidden ({hidden}) must be a multiple of heads ({heads})")
    if seq_len > max_positions:
        raise ValueError(f"bert_large: seq_len ({seq_len}) exceeds max_positions ({max_positions})")
    tokens = keras.Input(shape=(seq_len,), dtype="int64", name=f"{name}_token_ids")
    segs = keras.Input(shape=(seq_len,), dtype="int64", name=f"{name}_segment_ids")
    pos = keras.Input(shape=(seq_len,), dtype="int64", name=f"{name}_position_ids")
    x = L.Add(name=f"{name}_embeddings")([
        L.Embedding(vocab_size, hidden, name=f"{name}_word_embeddings")(tokens),
        L.Embedding(max_positions, hidden, name=f"{name}_position_embeddings")(pos),
        L.Embedding(segments, hidden, name=f"{name}_segment_embeddings")(segs)])
    x = L.LayerNormalization(epsilon=1e-12, name=f"{name}_embeddings_ln")(x)
    if dropout:
        x = L.Dropout(dropout, name=f"{name}_embeddings_dropout")(x)
    for i in range(layers):
        p = f"{name}_layer_{i}"
        a = L.MultiHeadAttention(num_heads=heads, key_dim=hidden // heads, dropout=dropout,
                                 name=f"{p}_attention")(x, x)
        if dropout:
            a = L.Dropout(dropout, name=f"{p}_attention_dropout")(a)
        x = L.LayerNormalization(epsilon=1e-12, name=f"{p}_attention_ln")(
            L.Add(name=f"{p}_attention_residual")([x, a]))
        f = L.Dense(ffn, activation="gelu", name=f"{p}_intermediate")(x)
        f = L.Dense(hidden, name=f"{p}_output")(f)
        if dropout:
            f = L.Dropout(dropout, name=f"{p}_output_dropout")(f)
        x = L.LayerNormalization(epsilon=1e-12, name=f"{p}_output_ln")(
            L.Add(name=f"{p}_output_residual")([x, f]))
    outputs = []
    if mlm_head:
        m = L.Dense(hidden, activation="gelu", name=f"{name}_mlm_transform")(x)
        m = L.LayerNormalization(epsilon=1e-12, name=f"{name}_mlm_ln")(m)
        outputs.append(L.Dense(vocab_size, activation="softmax", name=f"{name}_mlm_decoder")(m))
    pooled = None
    if classes is not None or not mlm_head:
        pooled = L.Dense(hidden, activation="tanh", name=f"{name}_pooler")(
            _first_token(x, seq_len, hidden, name))
    if classes is not None:
        outputs.append(L.Dense(classes, activation="softmax", name=f"{name}_classifier")(pooled))
    if not outputs:
        outputs = [pooled]
    return keras.Model([tokens, segs, pos], outputs[0] if len(outputs) == 1 else outputs, name=name)
