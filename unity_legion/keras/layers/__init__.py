"""Keras 3-style layers, one per file."""

from unity_legion.keras.layers.activation import Activation
from unity_legion.keras.layers.add import Add
from unity_legion.keras.layers.batch_normalization import BatchNormalization
from unity_legion.keras.layers.concatenate import Concatenate
from unity_legion.keras.layers.conv1d import Conv1D
from unity_legion.keras.layers.conv2d_transpose import Conv2DTranspose
from unity_legion.keras.layers.conv2d import Conv2D
from unity_legion.keras.layers.dense import Dense
from unity_legion.keras.layers.dot import Dot
from unity_legion.keras.layers.dropout import Dropout
from unity_legion.keras.layers.embedding import Embedding
from unity_legion.keras.layers.flatten import Flatten
from unity_legion.keras.layers.global_max_pooling2d import GlobalMaxPooling2D
from unity_legion.keras.layers.identity import Identity
from unity_legion.keras.layers.input_layer import Input, InputLayer
from unity_legion.keras.layers.layer import KerasTensor, Layer
from unity_legion.keras.layers.layer_normalization import LayerNormalization
from unity_legion.keras.layers.multi_head_attention import MultiHeadAttention
from unity_legion.keras.layers.multiply import Multiply
from unity_legion.keras.layers.permute import Permute
from unity_legion.keras.layers.pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D
from unity_legion.keras.layers.pooling1d import (AveragePooling1D, GlobalAveragePooling1D,
                                                GlobalMaxPooling1D, MaxPooling1D)
from unity_legion.keras.layers.relu import LeakyReLU, ReLU
from unity_legion.keras.layers.rescaling import Rescaling
from unity_legion.keras.layers.reshape import Reshape
from unity_legion.keras.layers.softmax import Softmax
from unity_legion.keras.layers.split import Split
from unity_legion.keras.layers.subtract import Subtract
from unity_legion.keras.layers.upsampling2d import UpSampling2D
from unity_legion.keras.layers.zero_padding2d import ZeroPadding2D

__all__ = ["Activation", "Add", "AveragePooling2D", "BatchNormalization", "Concatenate", "Conv2D",
           "Dense", "Dot", "Dropout", "Embedding", "Flatten", "GlobalAveragePooling2D", "Identity",
           "Input", "InputLayer", "KerasTensor", "Layer", "LayerNormalization", "MaxPooling2D",
           "MultiHeadAttention", "Multiply", "Permute", "Reshape", "Softmax", "Split", "Subtract",
           "ZeroPadding2D",
           # 1-D layers, global max pooling, rectifiers, rescaling, upsampling, transposed conv
           "AveragePooling1D", "Conv1D", "Conv2DTranspose", "GlobalAveragePooling1D",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "LeakyReLU", "MaxPooling1D", "ReLU",
           "Rescaling", "UpSampling2D"]
