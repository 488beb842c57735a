"""The baseline Fashion-MNIST CNN of the demo and the benchmarks, and how it is trained.

``fashion_cnn()`` builds it (about 132k parameters, 14.7 M MACs per image: four 3 x 3 conv
layers with batch normalisation and ReLU, two max-pools, global average pooling, one dense
layer); ``train_fashion_cnn`` trains it; ``load_fashion_cnn`` returns the trained copy shipped
with tflowrank (produced by ``examples/train_fashion_cnn.py``). Inputs are images scaled to
[0, 1] with a channel axis: ``prepare_images`` does that to the uint8 arrays of
``tflowrank.datasets.fashion_mnist``.
"""

from importlib import resources

import numpy as np

__all__ = ["fashion_cnn", "load_fashion_cnn", "prepare_images", "train_fashion_cnn",
           "SHIPPED_MODEL"]

SHIPPED_MODEL = "fashion_cnn.keras"


def prepare_images(x):
    """uint8 (N, 28, 28) images -> float32 (N, 28, 28, 1) in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    return x.astype(np.float32) / 255.0


def fashion_cnn(name="fashion_cnn"):
    """The untrained baseline CNN, a Functional model with static input (28, 28, 1)."""
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for index, (filters, pool) in enumerate([(32, True), (64, False), (64, True), (128, False)],
                                            start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization(name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def compile_classifier(model, learning_rate=1e-3, decay_steps=None):
    """Compile ``model`` in place for integer labels and logits (Adam, optional cosine decay)."""
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    schedule = learning_rate
    if decay_steps:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_fashion_cnn(epochs=15, batch_size=128, seed=0, verbose=2, data=None):
    """Train ``fashion_cnn()`` on Fashion-MNIST; return ``(model, history, test_accuracy)``."""
    from ._backend import require_tensorflow
    from .datasets import fashion_mnist

    keras, _ = require_tensorflow()
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = data if data is not None else fashion_mnist()
    x_train, x_test = prepare_images(x_train), prepare_images(x_test)
    model = compile_classifier(fashion_cnn(),
                               decay_steps=epochs * -(-len(x_train) // batch_size))
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                        validation_data=(x_test, y_test), verbose=verbose)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return model, history, float(accuracy)


def load_fashion_cnn():
    """The trained baseline shipped with tflowrank, or None if this installation lacks it."""
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    source = resources.files("tflowrank") / "data" / SHIPPED_MODEL
    if not source.is_file():
        return None
    with resources.as_file(source) as path:
        return keras.models.load_model(path, compile=False)
