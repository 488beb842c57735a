"""What the property tests of the convolution chains check their ground truth with."""

import numpy as np


def tensorflow_conv_is_right(input_shape, kernel_shape, strides, padding, dilation):
    """Whether TensorFlow's float32 CPU conv2d agrees with its float64 one on this geometry.

    TensorFlow 2.21's oneDNN float32 kernel returns wrong numbers (zeros or garbage) for a batch
    of more than one, one input channel, a width-only stride, "valid" padding and an output one
    column wide (README, "Known problems"); a plain Keras Conv2D is as wrong there as a
    factorized chain, so examples whose chain holds such a step say nothing about the
    factorization.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape)
    k = rng.normal(size=kernel_shape)
    args = dict(strides=strides, padding=padding.upper(), dilations=dilation)
    got = tf.nn.conv2d(x.astype("float32"), k.astype("float32"), **args).numpy()
    want = tf.nn.conv2d(x, k, **args).numpy()
    return np.allclose(got, want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1.0))
