"""Knowledge distillation: packed targets and the loss against a direct NumPy computation."""

import numpy as np
import pytest

from tflowrank.distillation import SOFT_WEIGHT, TEMPERATURE, distillation_loss, packed_targets


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_packed_targets_hold_the_label_then_the_teacher_logits():
    teacher = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]], "float32")
    packed = packed_targets(np.array([1, 2]), teacher)
    np.testing.assert_allclose(packed, [[1, 1, 2, 0.5], [2, 0.1, 0.2, 3]], rtol=1e-6)
    one_hot = packed_targets(np.eye(3)[[1, 2]], teacher)
    np.testing.assert_array_equal(one_hot, packed)
    probabilities = np.exp(_log_softmax(teacher))
    from_probabilities = packed_targets(np.array([1, 2]), probabilities, probabilities=True)
    # log-probabilities are the logits up to a constant per row
    np.testing.assert_allclose(_log_softmax(from_probabilities[:, 1:]), _log_softmax(teacher), atol=1e-5)


@pytest.mark.parametrize("labels, teacher, message", [
    (np.zeros(3), np.zeros((3,)), r"class scores of shape \(N, classes >= 2\)"),
    (np.zeros(2), np.zeros((3, 4)), r"one integer label or one-hot row per sample"),
    (np.zeros((3, 2, 2)), np.zeros((3, 4)), r"one integer label or one-hot row per sample"),
])
def test_packed_targets_refuse_mismatched_shapes(labels, teacher, message):
    with pytest.raises(ValueError, match=message):
        packed_targets(labels, teacher)


@pytest.mark.parametrize("probabilities", [False, True])
def test_the_loss_is_label_cross_entropy_plus_scaled_softened_kl(probabilities):
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 4)).astype("float32")
    labels = rng.integers(0, 4, size=5)
    outputs = np.exp(_log_softmax(student)) if probabilities else student
    teacher_in = np.exp(_log_softmax(teacher)) if probabilities else teacher
    got = np.asarray(distillation_loss(probabilities)(packed_targets(labels, teacher_in, probabilities),
                                                      outputs))
    hard = -_log_softmax(student)[np.arange(5), labels]
    t, s = _log_softmax(teacher / TEMPERATURE), _log_softmax(student / TEMPERATURE)
    soft = (np.exp(t) * (t - s)).sum(-1)
    np.testing.assert_allclose(got, (1 - SOFT_WEIGHT) * hard + SOFT_WEIGHT * TEMPERATURE ** 2 * soft,
                               rtol=1e-4, atol=1e-5)
    same = np.asarray(distillation_loss()(packed_targets(labels, teacher), teacher))
    np.testing.assert_allclose(same, (1 - SOFT_WEIGHT) * -_log_softmax(teacher)[np.arange(5), labels],
                               rtol=1e-4)  # a student equal to its teacher pays the label loss only


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"Received: soft_weight=1\.5"):
        distillation_loss(soft_weight=1.5)
    with pytest.raises(ValueError, match=r"Received: temperature=0"):
        distillation_loss(temperature=0)
