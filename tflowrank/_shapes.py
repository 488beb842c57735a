"""Output sizes and multiply-accumulate counts of convolutions and dense layers (pure Python).

MACs are per single input sample. A size that is not known statically (None) makes the count None.
"""

import math

__all__ = ["causal_left", "conv_output_size", "conv_output_hw", "conv_macs", "dense_macs"]


def causal_left(kernel, dilation):
    """The zeros a causal 1-D convolution puts before the sequence: ``(kernel - 1) * dilation``."""
    return (kernel - 1) * dilation


def conv_output_size(size, kernel, stride, dilation, padding):
    """Output length of a 1-D convolution, as TensorFlow computes it."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    return max((size - effective) // stride + 1, 0)


def conv_output_hw(hw, kernel_size, strides, dilation_rate, padding):
    return tuple(
        conv_output_size(n, k, s, d, padding)
        for n, k, s, d in zip(hw, kernel_size, strides, dilation_rate)
    )


def conv_macs(input_shape, kernel_size, strides, dilation_rate, padding, filters, groups=1):
    """MACs of a dense 2-D convolution on a (batch, h, w, cin) input."""
    _, h, w, cin = input_shape
    ho, wo = conv_output_hw((h, w), kernel_size, strides, dilation_rate, padding)
    if None in (ho, wo, cin):
        return None
    return ho * wo * kernel_size[0] * kernel_size[1] * (cin // groups) * filters


def dense_macs(input_shape, units, rank=None):
    """MACs of a dense layer on (batch, ..., in); with ``rank``, of the in -> rank -> units pair."""
    leading = input_shape[1:-1]
    features = input_shape[-1]
    if features is None or any(d is None for d in leading):
        return None
    positions = math.prod(leading) if leading else 1
    if rank is None:
        return positions * features * units
    return positions * (features * rank + rank * units)
