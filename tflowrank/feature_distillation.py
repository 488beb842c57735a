"""Feature distillation: fine-tune a factorized model to reproduce the input model's layers too.

The loss of the fine-tuning becomes the model's own loss plus ``weight`` times the mean, over
the factorized layers, of the squared difference between each factorized layer's output and the
output of the input model's layer of the same name, divided by the mean square of the latter
(so every layer weighs the same whatever the scale of its outputs; FitNets-style hints, Romero
et al. 2015, with the input model as the teacher and every factorized layer as a hint). The
input model runs beside the compressed one on every batch, frozen, in inference mode.

``FeatureDistiller(student, teacher, layer_names, loss, weight)`` is the Keras model that
trains ``student``'s own layers (it holds no weights of its own); ``matched_layers`` lists the
layers the two models share by name that can be matched.
"""

from collections import Counter

import keras
from keras import ops

__all__ = ["FeatureDistiller", "matched_layers"]

_EPSILON = 1e-12


def matched_layers(student, teacher):
    """Names of ``student``'s factorized layers that ``teacher`` has too, with the same output
    shape, each called once at the top level of both models (in execution order)."""
    from .graph import layer_calls
    from .layers import FactorizedLayer

    def single_calls(model):  # as refit_last_factors picks its layers
        calls = layer_calls(model)
        times_called = Counter(id(call.layer) for call in calls)
        return {call.path: call for call in calls
                if call.path == call.layer.name and times_called[id(call.layer)] == 1}

    theirs = single_calls(teacher)
    return tuple(name for name, call in single_calls(student).items()
                 if isinstance(call.layer, FactorizedLayer) and name in theirs
                 and theirs[name].output_shapes == call.output_shapes)


class FeatureDistiller(keras.Model):
    """Trains ``student`` on ``loss(y, student(x)) + weight x`` the mean normalised squared error
    of its layers ``layer_names`` against ``teacher``'s layers of the same names.

    ``student`` and ``teacher``: Functional or Sequential models of the same input; ``teacher``
    is not trained. Not meant to be saved: train it, then keep using ``student``.
    """

    def __init__(self, student, teacher, layer_names, loss, weight):
        super().__init__(name=f"{student.name}_feature_distiller")
        layer_names = tuple(layer_names)
        if not layer_names:
            raise ValueError("`layer_names` must name at least one layer to match. Received: ()")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"`weight` must be a number > 0. Received: weight={weight!r}")
        self.layer_names = layer_names
        self.weight = float(weight)
        self.task_loss = loss
        self.student_outputs = keras.Model(
            student.inputs, [student.outputs[0]] + [student.get_layer(n).output for n in layer_names])
        from .graph import rewrite

        teacher = rewrite(teacher, {})  # a copy: freezing it leaves the caller's model alone
        teacher.trainable = False
        self.teacher_outputs = keras.Model(
            teacher.inputs, [teacher.get_layer(n).output for n in layer_names])

    def call(self, inputs, training=False):
        return self.student_outputs(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        outputs, *features = y_pred
        targets = self.teacher_outputs(x, training=False)
        if not isinstance(targets, (list, tuple)):
            targets = [targets]
        hints = [ops.mean(ops.square(f - ops.stop_gradient(t))) / (ops.mean(ops.square(t)) + _EPSILON)
                 for f, t in zip(features, targets)]
        task = ops.mean(self.task_loss(y, outputs))
        return task + self.weight * ops.mean(ops.stack(hints))
