"""keras-io's "Text classification with Transformer" (Keras 3 version), on a synthetic data set.

This is a script, not a test: tests/test_keras_subclass.py runs its source through real Keras 3
and, with only the two import lines changed, through unity_legion.keras, and compares what
it leaves in `result`. The model code below is the example's; the data is made here (no
downloads): a review is positive when it holds "good" words (ids 1-100), negative with "bad"
words (ids 101-200), among neutral filler.
"""

import keras
from keras import layers, ops

import numpy as np


class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim),]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


vocab_size = 1000  # the example: 20000 words of IMDB reviews
maxlen = 40        # the example: 200


def synthetic_reviews(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(201, vocab_size, size=(n, maxlen))
    y = rng.integers(0, 2, size=n)
    for i in range(n):
        where = rng.choice(maxlen, size=6, replace=False)
        x[i, where] = rng.integers(1, 101, size=6) + (0 if y[i] else 100)
    return x.astype("int32"), y.astype("int32")


(x_train, y_train), (x_val, y_val) = synthetic_reviews(1024, 1), synthetic_reviews(256, 2)

embed_dim = 32  # Embedding size for each token
num_heads = 2  # Number of attention heads
ff_dim = 32  # Hidden layer size in feed forward network inside transformer

inputs = layers.Input(shape=(maxlen,))
embedding_layer = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)
x = embedding_layer(inputs)
transformer_block = TransformerBlock(embed_dim, num_heads, ff_dim)
x = transformer_block(x)
x = layers.GlobalAveragePooling1D()(x)
x = layers.Dropout(0.1)(x)
x = layers.Dense(20, activation="relu")(x)
x = layers.Dropout(0.1)(x)
outputs = layers.Dense(2, activation="softmax")(x)

model = keras.Model(inputs=inputs, outputs=outputs)

model.compile(
    optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
)
history = model.fit(
    x_train, y_train, batch_size=32, epochs=2, validation_data=(x_val, y_val), verbose=0
)

result = {
    "params": int(model.count_params()),
    "layers": [type(layer).__name__ for layer in model.layers],
    "weight_shapes": [list(w.shape) for w in model.get_weights()],
    "accuracy": float(np.mean(np.argmax(model.predict(x_val, verbose=0), -1) == y_val)),
}
