"""Knowledge distillation: fine-tune a compressed model on the original model's outputs too.

The original model's outputs on the training inputs are computed once and travel with the
labels as one target array (``packed_targets``: the label, then the original's logits), so any
``fit`` can use them; ``distillation_loss`` is the Keras loss that unpacks them (Hinton et al.
2015: the label loss plus the KL divergence between the two models' outputs softened by a
temperature, scaled by its square so that its gradients keep their size).
"""

import numpy as np

__all__ = ["packed_targets", "distillation_loss", "TEMPERATURE", "SOFT_WEIGHT"]

TEMPERATURE = 4.0
SOFT_WEIGHT = 0.9
_FLOOR = 1e-8  # probabilities are clipped to it before their log


def packed_targets(labels, teacher_outputs, probabilities=False):
    """``(N, 1 + C)`` float32: each sample's integer label, then the teacher's logits.

    ``labels``: integer labels ``(N,)`` / ``(N, 1)`` or one-hot rows ``(N, C)``;
    ``teacher_outputs``: ``(N, C)`` logits, or probabilities when ``probabilities`` (their log
    is used: logits up to a constant per row, which the softmax ignores).
    """
    labels = np.asarray(labels)
    teacher = np.asarray(teacher_outputs, dtype=np.float32)
    if teacher.ndim != 2 or teacher.shape[-1] < 2:
        raise ValueError("Distillation needs class scores of shape (N, classes >= 2) out of the "
                         f"model. Received: outputs of shape {teacher.shape}")
    if labels.ndim == 2 and labels.shape[-1] == teacher.shape[-1] and labels.shape[-1] > 1:
        labels = labels.argmax(-1)
    labels = labels.reshape(len(labels)) if labels.size == len(labels) else None
    if labels is None or len(labels) != len(teacher):
        raise ValueError("Distillation needs one integer label or one-hot row per sample. "
                         f"Received: labels of shape {np.shape(labels)} for {len(teacher)} outputs")
    if probabilities:
        teacher = np.log(np.clip(teacher, _FLOOR, 1.0))
    return np.concatenate([labels.astype(np.float32)[:, None], teacher], axis=1)


def distillation_loss(probabilities=False, temperature=TEMPERATURE, soft_weight=SOFT_WEIGHT):
    """A Keras loss ``(packed_targets, outputs) -> per-sample loss``.

    ``(1 - soft_weight) x`` cross-entropy with the label ``+ soft_weight x T^2 x
    KL(softmax(teacher / T) || softmax(student / T))``; ``probabilities``: the model outputs
    probabilities rather than logits.
    """
    if not 0.0 <= soft_weight <= 1.0:
        raise ValueError(f"`soft_weight` must be in [0, 1]. Received: soft_weight={soft_weight!r}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature!r}")
    import keras
    from keras import ops

    def distillation(y_true, y_pred):
        labels = ops.cast(y_true[:, 0], "int32")
        teacher = y_true[:, 1:]
        student = ops.log(ops.clip(y_pred, _FLOOR, 1.0)) if probabilities else y_pred
        hard = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
        teacher_log = ops.log_softmax(teacher / temperature, axis=-1)
        student_log = ops.log_softmax(student / temperature, axis=-1)
        soft = ops.sum(ops.exp(teacher_log) * (teacher_log - student_log), axis=-1)
        return (1.0 - soft_weight) * hard + soft_weight * temperature ** 2 * soft

    return distillation
