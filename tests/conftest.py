import os

# Quiet TensorFlow's C++ start-up logs in test output; set before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# CI runs a fixed set of examples (HYPOTHESIS_PROFILE=ci, set by .ci/run) so that a red run can be
# reproduced; local runs explore new examples each time.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
