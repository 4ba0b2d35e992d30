"""ResNeXt-50 32x4d (Xie et al. 2017), laid out as torchvision's `resnext50_32x4d`.

Images are channels_last (batch, height, width, 3). Stem: 7x7/2 convolution (64 filters), batch
norm, ReLU, 3x3/2 max pooling. Four stages of bottleneck blocks ([3, 4, 6, 3]); a block is 1x1 conv
-> BN -> ReLU -> grouped 3x3 conv (`groups` groups, the stage's stride here, as torchvision's
"v1.5") -> BN -> ReLU -> 1x1 conv (4 x planes) -> BN, plus the shortcut (a 1x1 conv with the
stride and BN where the shape changes), then ReLU. Global average pooling and Dense(classes,
softmax). Convolutions have no bias; batch norms use torchvision's epsilon 1e-5 and momentum 0.1
(Keras momentum 0.9). Padding is torchvision's: explicit ZeroPadding2D before the 7x7/2
convolution, the max pooling (inputs are >= 0 after the ReLU, so zero padding equals -inf padding)
and the strided 3x3 convolutions; "same" where the stride is 1.

Parameter counts. torchvision counts parameters only: 25,028,904 for 1000 classes, which is the
trainable count here (conv kernels, BN gamma and beta, the classifier). Keras' count_params() also
counts the batch norms' moving mean and variance (non-trainable weights): 25,028,904 + 2 x 34,112
(the batch-norm channels summed) = 25,097,128.
"""

from __future__ import annotations

from typing import Sequence

from unity_legion import keras

L = keras.layers
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.9


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int, groups: int,
             relu: bool, name: str) -> keras.KerasTensor:
    """Conv (no bias) + BN (+ ReLU), torchvision's padding kernel // 2."""
    pad = kernel // 2
    if stride > 1 and pad:
        x = L.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = L.Conv2D(filters, kernel, strides=stride, padding="valid" if stride > 1 else "same",
                 groups=groups, use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return L.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _bottleneck(x: keras.KerasTensor, planes: int, stride: int, groups: int, width_per_group: int,
                base_width: int, name: str) -> keras.KerasTensor:
    width = max(1, planes * width_per_group // base_width) * groups  # torchvision's, floored at 1
    out_channels = planes * 4
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, stride, 1, False, f"{name}_downsample")
    y = _conv_bn(x, width, 1, 1, 1, True, f"{name}_1")
    y = _conv_bn(y, width, 3, stride, groups, True, f"{name}_2")
    y = _conv_bn(y, out_channels, 1, 1, 1, False, f"{name}_3")
    y = L.Add(name=f"{name}_add")([y, shortcut])
    return L.Activation("relu", name=f"{name}_out")(y)


def resnext50(image_size: int = 224, channels: int = 3, classes: int = 1000,
              blocks: Sequence[int] = (3, 4, 6, 3), groups: int = 32, width_per_group: int = 4,
              base_width: int = 64, name: str = "resnext50") -> keras.Model:
    """Input (batch, image_size, image_size, channels); output (batch, classes) probabilities.

    `base_width` is the stem's filters and the first stage's planes (64 in the paper); the stages
    use base_width x 1, 2, 4, 8 planes. Shrink `blocks`, `groups`, `width_per_group`, `base_width`
    and `image_size` to scale the model down (image_size >= 32 keeps every stage non-empty)."""
    inputs = keras.Input(shape=(image_size, image_size, channels), name=f"{name}_input")
    x = L.ZeroPadding2D(3, name=f"{name}_stem_pad")(inputs)
    x = L.Conv2D(base_width, 7, strides=2, use_bias=False, name=f"{name}_stem_conv")(x)
    x = L.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_stem_bn")(x)
    x = L.Activation("relu", name=f"{name}_stem_relu")(x)
    x = L.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
    x = L.MaxPooling2D(3, strides=2, name=f"{name}_stem_pool")(x)
    for stage, n in enumerate(blocks):
        planes = base_width * 2 ** stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _bottleneck(x, planes, stride, groups, width_per_group, 64,
                            f"{name}_stage{stage + 1}_block{b + 1}")
    x = L.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    outputs = L.Dense(classes, activation="softmax", name=f"{name}_fc")(x)
    return keras.Model(inputs, outputs, name=name)
