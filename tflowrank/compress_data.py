"""compress's training and validation data: ``(x, y)`` NumPy arrays, or a ``tf.data.Dataset``.

Arrays are drawn from by index with ``compress``'s seeded generator: the search and calibration
subsets are random samples, the fine-tuning batches a new permutation every epoch.

A dataset is read in passes and never held whole, so a training set larger than memory can be
compressed: the subsets ``compress`` needs (the search's and the calibration's samples, the
batches that re-estimate batch-norm statistics) are the first samples of one pass, and the
fine-tuning reads one pass per epoch, in the dataset's own order and batches, as ``model.fit``
does (shuffle it, ``reshuffle_each_iteration`` as ``tf.data`` does by default, for random
subsets and a new order every epoch). Its elements are ``(x, y)`` pairs, batched or not
(unbatched ones are batched by ``compress``'s ``batch_size``); its number of batches must be
finite (a ``.repeat()`` without a count is refused), and is counted in one extra pass when
``tf.data`` cannot tell it.
"""

import copy

import numpy as np

from ._backend import is_dataset

__all__ = ["Arrays", "Stream", "as_data", "keras_accuracy", "tflite_accuracy"]


def as_data(name, data, model, batch_size):
    """``data`` (the argument ``name``) as ``Arrays`` or ``Stream``, checked against ``model``'s
    input; a clear ``ValueError`` naming ``name`` otherwise."""
    if is_dataset(data):
        return Stream(name, data, model, batch_size)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"`{name}` must be a pair (x, y) of NumPy arrays or a tf.data.Dataset of "
                         f"(x, y). Received: {name} of type {type(data).__name__}")
    return Arrays(name, *data)


def keras_accuracy(model, data, logit=False):
    """Top-1 of ``model`` on ``data`` (Arrays or Stream): the argmax; one output above 0.5, or
    above 0 with ``logit``."""
    from .evaluate import class_labels, predicted_classes

    correct = total = 0
    for x, y in data.chunks():  # arrays: one chunk; a stream: its batches, each one step
        outputs = model.predict_on_batch(x) if data.stream else model.predict(x, batch_size=512, verbose=0)
        correct += int(np.sum(predicted_classes(outputs, logit) == class_labels(y)))
        total += len(x)
    return correct / total


def tflite_accuracy(path, data):
    """Top-1 of the .tflite classifier at ``path`` on ``data`` (``tflowrank.evaluate_tflite``)."""
    from .evaluate import evaluate_tflite

    return evaluate_tflite(path, data.dataset) if data.stream else evaluate_tflite(path, data.x, data.y)


class Arrays:
    """``(x, y)`` NumPy arrays, drawn from with a seeded ``numpy.random.Generator``."""

    stream = False

    def __init__(self, name, x, y):
        x, y = np.asarray(x), np.asarray(y)
        if len(x) == 0:
            raise ValueError(f"`{name}` is empty: it holds no sample. Received: x with shape {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"`{name}` holds {len(x)} inputs but {len(y)} labels. Received: x with "
                             f"shape {x.shape}, y with shape {y.shape}")
        self.name, self.x, self.y = name, x.astype(np.float32, copy=False), y

    @property
    def samples(self):
        return len(self.x)

    def head(self, count):
        """The first ``count`` samples, ``(x, y)``."""
        return self.x[:count], self.y[:count]

    def subset(self, count, rng):
        """``count`` samples (all if fewer) drawn without replacement, in their order."""
        pick = np.sort(rng.choice(len(self.x), min(count, len(self.x)), replace=False))
        return self.x[pick], self.y[pick]

    def input_batches(self, count, batch_size, rng):
        """Up to ``count`` batches of inputs from one permutation (drawn at the first batch)."""
        order = rng.permutation(len(self.x))
        for step in range(min(count, -(-len(self.x) // batch_size))):
            yield self.x[np.sort(order[step * batch_size:(step + 1) * batch_size])]

    def chunks(self):
        """The whole data as one ``(x, y)`` chunk (evaluation batches it itself)."""
        yield self.x, self.y

    def relabel(self, targets):
        """The same inputs with ``targets(x, y)`` as labels, computed once for all samples."""
        return Arrays(self.name, self.x, targets(self.x, self.y))

    def steps(self, batch_size, epochs, rng):
        """``(steps per epoch, batch(i))``: the fine-tuning's step ``i`` (of ``epochs`` times the
        steps per epoch) as ``(x, y)``, each epoch a new permutation cut into batches."""
        batches = permuted_batches(len(self.x), batch_size, epochs, rng)
        return -(-len(self.x) // batch_size), lambda i: (self.x[batches[i]], self.y[batches[i]])


def permuted_batches(n, batch_size, epochs, rng):
    """The sample indices of every fine-tuning step, in order: each epoch a new permutation of
    the ``n`` samples cut into batches of ``batch_size`` (the last one of an epoch may be
    smaller)."""
    steps = []
    for _ in range(epochs):
        order = rng.permutation(n)
        steps += [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]
    return steps


class Stream:
    """A ``tf.data.Dataset`` of ``(x, y)``, read in passes; unbatched elements batched by
    ``batch_size``. ``samples`` is the number of samples of one pass once a pass has ended."""

    stream = True

    def __init__(self, name, dataset, model, batch_size, targets=None):
        import tensorflow as tf

        self.name, self.targets, self.samples = name, targets, None
        spec = dataset.element_spec
        expected = tuple(model.inputs[0].shape[1:])
        if not isinstance(spec, (tuple, list)) or len(spec) != 2 or not all(
                isinstance(s, tf.TensorSpec) for s in spec):
            raise ValueError(f"`{name}` must yield (x, y) pairs of tensors. Received: a "
                             f"tf.data.Dataset with element_spec {spec}")
        shape = tuple(spec[0].shape) if spec[0].shape.rank is not None else None
        if shape is not None and len(shape) == len(expected):
            dataset = dataset.batch(batch_size)  # samples, not batches
            shape = (None, *shape)
        if shape is None or len(shape) != len(expected) + 1 or any(
                e is not None and a is not None and e != a for e, a in zip(expected, shape[1:])):
            raise ValueError(f"The inputs of `{name}` do not match the model input "
                             f"{(None, *expected)}. Received: a tf.data.Dataset of x with shape "
                             f"{shape if shape is not None else 'of unknown rank'}")
        self.dataset = dataset
        self._batches = None
        self._cardinality()  # an endless dataset is refused at once

    def _cardinality(self):
        import tensorflow as tf

        count = int(self.dataset.cardinality())
        if count == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"`{self.name}` repeats forever (tf.data cardinality INFINITE): "
                             "compress reads it in passes, so a pass must end. "
                             "Received: a tf.data.Dataset without end (drop the .repeat())")
        return None if count == tf.data.UNKNOWN_CARDINALITY else count

    def batches_per_pass(self):
        """Batches of one pass: ``tf.data``'s cardinality, or counted in one pass when unknown."""
        if self._batches is None:
            count = self._cardinality()
            if count is None:
                count = sum(1 for _ in self._pass())
            if count == 0:
                raise ValueError(f"`{self.name}` is empty: the dataset yielded no element. "
                                 "Received: an empty tf.data.Dataset")
            self._batches = count
        return self._batches

    def _pass(self, limit=None):
        """One pass over the batches as NumPy ``(x, y)``; records ``samples`` if it ends."""
        seen = 0
        for step, (x, y) in enumerate(self.dataset):
            if limit is not None and step >= limit:
                return
            x, y = x.numpy().astype(np.float32, copy=False), y.numpy()
            seen += len(x)
            yield x, (y if self.targets is None else self.targets(x, y))
        if not seen:
            raise ValueError(f"`{self.name}` is empty: the dataset yielded no element. "
                             "Received: an empty tf.data.Dataset")
        self.samples = seen

    def head(self, count):
        """The first ``count`` samples of one pass (fewer if the pass is shorter), ``(x, y)``."""
        xs, ys, seen = [], [], 0
        for x, y in self._pass():
            xs.append(x[:count - seen])
            ys.append(y[:count - seen])
            seen += len(xs[-1])
            if seen >= count:
                break
        return np.concatenate(xs), np.concatenate(ys)

    def subset(self, count, rng):  # noqa: ARG002 - the dataset's own order is its draw
        """The first ``count`` samples of one pass (the dataset's shuffling makes them random)."""
        return self.head(count)

    def input_batches(self, count, batch_size, rng):  # noqa: ARG002 - the dataset's own batches
        """The inputs of the first ``count`` batches of one pass."""
        for x, _ in self._pass(limit=count):
            yield x

    def chunks(self):
        """One pass, batch by batch."""
        yield from self._pass()

    def relabel(self, targets):
        """The same stream with ``targets(x, y)`` as labels, computed batch by batch."""
        relabelled = copy.copy(self)
        relabelled.targets = targets
        return relabelled

    def steps(self, batch_size, epochs, rng):  # noqa: ARG002 - the dataset's own batches
        """``(batches per pass, batch(i))``: step ``i`` of the fine-tuning, read in order from
        consecutive passes (a pass shorter or longer than counted just moves the epochs' edges).
        ``batch(i)`` may be asked again for the last few steps (Keras peeks at the first batches
        to learn their shapes) but not for older ones."""
        return self.batches_per_pass(), _Reader(self)


class _Reader:
    """Step ``i`` of a fine-tuning that reads a stream pass after pass, keeping the last few."""

    _KEEP = 4

    def __init__(self, stream):
        self.stream, self.kept, self.next = stream, {}, 0
        self.batches = self._forever()

    def _forever(self):
        while True:
            yield from self.stream._pass()

    def __call__(self, i):
        while self.next <= i:
            self.kept[self.next] = next(self.batches)
            self.next += 1
        for old in [k for k in self.kept if k < i - self._KEEP]:
            del self.kept[old]
        if i not in self.kept:
            raise IndexError(f"step {i} of the stream was read and dropped already")
        return self.kept[i]
