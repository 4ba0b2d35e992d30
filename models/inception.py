"""Inception-v3 (Szegedy et al. 2016) without the auxiliary classifier, laid out as torchvision's
`inception_v3` (its BasicConv2d: convolution without bias, batch norm with epsilon 0.001, ReLU).

Images are channels_last (batch, 299, 299, 3). Stem: 3x3/2, 3x3, 3x3 (same), max pool 3x3/2,
1x1, 3x3, max pool 3x3/2; then Mixed_5b..5d (InceptionA, pool features 32, 64, 64), Mixed_6a
(InceptionB), Mixed_6b..6e (InceptionC, 7x7 channels 128, 160, 160, 192), Mixed_7a (InceptionD),
Mixed_7b..7c (InceptionE), global average pooling, dropout 0.5 and Dense(classes, softmax).
Branch outputs are concatenated on the channel axis in torchvision's order. The branch average
poolings are torchvision's avg_pool2d(3, stride 1, padding 1) with count_include_pad: a
ZeroPadding2D(1) then AveragePooling2D(3, strides=1) (valid).

Parameter counts. torchvision's inception_v3 has 27,161,264 parameters, 3,326,696 of them in the
auxiliary head: 23,834,568 without it, which is the trainable count here (conv kernels, BN beta and
gamma, classifier). Keras' count_params() also counts the batch norms' moving mean and variance
(non-trainable): 23,834,568 + 2 x 17,216 (the batch-norm channels summed) = 23,869,000.

`width` scales every convolution's filters (rounded, at least 1) to shrink the model; the
smallest image torchvision allows, 75x75, keeps every stage non-empty.
"""

from __future__ import annotations

from unity_legion import keras

L = keras.layers
BN_EPSILON = 1e-3


class _Builder:
    """Names and scales the layers of one model."""

    def __init__(self, name: str, width: float) -> None:
        self.name, self.width = name, width

    def filters(self, n: int) -> int:
        return max(1, round(n * self.width))

    def conv(self, x, filters: int, kernel, name: str, strides: int = 1, padding: str = "valid"):
        x = L.Conv2D(self.filters(filters), kernel, strides=strides, padding=padding,
                     use_bias=False, name=f"{self.name}_{name}_conv")(x)
        x = L.BatchNormalization(epsilon=BN_EPSILON, name=f"{self.name}_{name}_bn")(x)
        return L.Activation("relu", name=f"{self.name}_{name}_relu")(x)

    def same(self, x, filters: int, kernel, name: str):
        return self.conv(x, filters, kernel, name, padding="same")

    def avg_pool(self, x, name: str):
        x = L.ZeroPadding2D(1, name=f"{self.name}_{name}_pad")(x)
        return L.AveragePooling2D(3, strides=1, name=f"{self.name}_{name}")(x)

    def max_pool(self, x, name: str):
        return L.MaxPooling2D(3, strides=2, name=f"{self.name}_{name}")(x)

    def concat(self, xs, name: str):
        return L.Concatenate(axis=-1, name=f"{self.name}_{name}")(xs)

    # --- the blocks ---------------------------------------------------------------------------
    def inception_a(self, x, pool_features: int, n: str):
        b1 = self.conv(x, 64, 1, f"{n}_branch1x1")
        b5 = self.conv(x, 48, 1, f"{n}_branch5x5_1")
        b5 = self.same(b5, 64, 5, f"{n}_branch5x5_2")
        b3 = self.conv(x, 64, 1, f"{n}_branch3x3dbl_1")
        b3 = self.same(b3, 96, 3, f"{n}_branch3x3dbl_2")
        b3 = self.same(b3, 96, 3, f"{n}_branch3x3dbl_3")
        bp = self.conv(self.avg_pool(x, f"{n}_pool"), pool_features, 1, f"{n}_branch_pool")
        return self.concat([b1, b5, b3, bp], n)

    def inception_b(self, x, n: str):
        b3 = self.conv(x, 384, 3, f"{n}_branch3x3", strides=2)
        bd = self.conv(x, 64, 1, f"{n}_branch3x3dbl_1")
        bd = self.same(bd, 96, 3, f"{n}_branch3x3dbl_2")
        bd = self.conv(bd, 96, 3, f"{n}_branch3x3dbl_3", strides=2)
        bp = self.max_pool(x, f"{n}_pool")
        return self.concat([b3, bd, bp], n)

    def inception_c(self, x, c7: int, n: str):
        b1 = self.conv(x, 192, 1, f"{n}_branch1x1")
        b7 = self.conv(x, c7, 1, f"{n}_branch7x7_1")
        b7 = self.same(b7, c7, (1, 7), f"{n}_branch7x7_2")
        b7 = self.same(b7, 192, (7, 1), f"{n}_branch7x7_3")
        bd = self.conv(x, c7, 1, f"{n}_branch7x7dbl_1")
        bd = self.same(bd, c7, (7, 1), f"{n}_branch7x7dbl_2")
        bd = self.same(bd, c7, (1, 7), f"{n}_branch7x7dbl_3")
        bd = self.same(bd, c7, (7, 1), f"{n}_branch7x7dbl_4")
        bd = self.same(bd, 192, (1, 7), f"{n}_branch7x7dbl_5")
        bp = self.conv(self.avg_pool(x, f"{n}_pool"), 192, 1, f"{n}_branch_pool")
        return self.concat([b1, b7, bd, bp], n)

    def inception_d(self, x, n: str):
        b3 = self.conv(x, 192, 1, f"{n}_branch3x3_1")
        b3 = self.conv(b3, 320, 3, f"{n}_branch3x3_2", strides=2)
        b7 = self.conv(x, 192, 1, f"{n}_branch7x7x3_1")
        b7 = self.same(b7, 192, (1, 7), f"{n}_branch7x7x3_2")
        b7 = self.same(b7, 192, (7, 1), f"{n}_branch7x7x3_3")
        b7 = self.conv(b7, 192, 3, f"{n}_branch7x7x3_4", strides=2)
        bp = self.max_pool(x, f"{n}_pool")
        return self.concat([b3, b7, bp], n)

    def inception_e(self, x, n: str):
        b1 = self.conv(x, 320, 1, f"{n}_branch1x1")
        b3 = self.conv(x, 384, 1, f"{n}_branch3x3_1")
        b3 = self.concat([self.same(b3, 384, (1, 3), f"{n}_branch3x3_2a"),
                          self.same(b3, 384, (3, 1), f"{n}_branch3x3_2b")], f"{n}_branch3x3")
        bd = self.conv(x, 448, 1, f"{n}_branch3x3dbl_1")
        bd = self.same(bd, 384, 3, f"{n}_branch3x3dbl_2")
        bd = self.concat([self.same(bd, 384, (1, 3), f"{n}_branch3x3dbl_3a"),
                          self.same(bd, 384, (3, 1), f"{n}_branch3x3dbl_3b")], f"{n}_branch3x3dbl")
        bp = self.conv(self.avg_pool(x, f"{n}_pool"), 192, 1, f"{n}_branch_pool")
        return self.concat([b1, b3, bd, bp], n)


def inception_v3(image_size: int = 299, channels: int = 3, classes: int = 1000,
                 width: float = 1.0, dropout: float = 0.5,
                 name: str = "inception_v3") -> keras.Model:
    """Input (batch, image_size, image_size, channels); output (batch, classes) probabilities."""
    if image_size < 75:
        raise ValueError(f"inception_v3: image_size must be at least 75, got {image_size}")
    b = _Builder(name, width)
    inputs = keras.Input(shape=(image_size, image_size, channels), name=f"{name}_input")
    x = b.conv(inputs, 32, 3, "Conv2d_1a_3x3", strides=2)
    x = b.conv(x, 32, 3, "Conv2d_2a_3x3")
    x = b.same(x, 64, 3, "Conv2d_2b_3x3")
    x = b.max_pool(x, "maxpool1")
    x = b.conv(x, 80, 1, "Conv2d_3b_1x1")
    x = b.conv(x, 192, 3, "Conv2d_4a_3x3")
    x = b.max_pool(x, "maxpool2")
    for n, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        x = b.inception_a(x, pool_features, n)
    x = b.inception_b(x, "Mixed_6a")
    for n, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = b.inception_c(x, c7, n)
    x = b.inception_d(x, "Mixed_7a")
    x = b.inception_e(x, "Mixed_7b")
    x = b.inception_e(x, "Mixed_7c")
    x = L.GlobalAveragePooling2D(name=f"{name}_avgpool")(x)
    if dropout:
        x = L.Dropout(dropout, name=f"{name}_dropout")(x)
    outputs = L.Dense(classes, activation="softmax", name=f"{name}_fc")(x)
    return keras.Model(inputs, outputs, name=name)
