"""Package hygiene: importing changes nothing global; other Keras backends get a clear error."""

import subprocess
import sys

import pytest


def _python(code, **env):
    import os

    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=environment)


def test_import_is_light_and_changes_nothing_global():
    result = _python(
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import tflowrank, tflowrank.datasets, tflowrank.decompositions\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf_keras', 'tensorflow_model_optimization',"
        " 'ai_edge_litert') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert dict(os.environ) == before\n"
        "assert callable(tflowrank.factorize) and callable(tflowrank.cost)\n"
        "assert 'tensorflow_model_optimization' not in sys.modules\n"
        "assert os.environ.get('TF_USE_LEGACY_KERAS') is None\n"
        "print(sorted(tflowrank.__all__))\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("cost", "factorize", "export_tflite", "profile", "evaluate_tflite", "layers",
                 "datasets"):
        assert f"'{name}'" in result.stdout


def test_public_names_resolve():
    import tflowrank

    for name in tflowrank.__all__:
        assert getattr(tflowrank, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        tflowrank.nope  # noqa: B018


@pytest.mark.slow
def test_other_keras_backend_gets_a_clear_error_at_the_first_call():
    result = _python(
        "import tflowrank\n"
        "try:\n"
        "    tflowrank.cost(None)\n"
        "except tflowrank.BackendError as e:\n"
        "    print(e)\n",
        KERAS_BACKEND="numpy",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("tflowrank needs the TensorFlow backend of Keras; found backend 'numpy'. "
            "Set the environment variable KERAS_BACKEND=tensorflow") in result.stdout
