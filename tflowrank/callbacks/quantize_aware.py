"""QuantizeAware: switch the fake quantization of a ``tflowrank.quantize_aware`` model on at an epoch."""

import keras

__all__ = ["QuantizeAware"]


class QuantizeAware(keras.callbacks.Callback):
    """Train in float until ``start_epoch``, then with int8 fake quantization.

    Before ``start_epoch`` (0-based) every quantization layer of the model computes in float, but
    its activation ranges are already tracked; from that epoch on, weights and activations are
    fake-quantized. Only the non-trainable ``quantize_enabled`` flag of each layer changes: the
    graph is not rebuilt, so this works inside a compiled train function and under
    ``tf.distribute`` strategies.

    Args:
        start_epoch: the first epoch trained with fake quantization, an int >= 0.
    """

    def __init__(self, start_epoch=0):
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(
                f"`start_epoch` must be an integer >= 0. Received: start_epoch={start_epoch!r}")
        self.start_epoch = start_epoch
        self._layers = []

    def on_train_begin(self, logs=None):
        from ..quantizers import quantizer_layers

        self._layers = quantizer_layers(self.model)
        if not self._layers:
            raise ValueError(
                "QuantizeAware needs a model made by tflowrank.quantize_aware; this one has no "
                f"quantization layers. Received: model={self.model.name!r}")

    def on_epoch_begin(self, epoch, logs=None):
        value = 1.0 if epoch >= self.start_epoch else 0.0
        for layer in self._layers:
            layer.quantize_enabled.assign(value)
