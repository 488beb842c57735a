"""The one exception type for tflowrank's own failures.

Bad arguments raise ``ValueError`` / ``TypeError`` naming the argument and the value received.
``TflowrankError`` is for failures of the outside world: a converter that refuses a graph, a
tool that crashes, a backend that cannot run what was asked.
"""

__all__ = ["TflowrankError", "BackendError", "ConversionError", "ToolError"]


class TflowrankError(Exception):
    """Base class of tflowrank's own failures."""


class BackendError(TflowrankError, RuntimeError):
    """Keras runs on a backend tflowrank cannot use for the requested call."""


class ConversionError(TflowrankError):
    """The TFLite converter refused the model; ``ops`` lists the offending ops when known."""

    def __init__(self, message, ops=()):
        super().__init__(message)
        self.ops = tuple(ops)


class ToolError(TflowrankError):
    """An outside tool failed; carries the command that ran and the tail of its output."""

    def __init__(self, message, command=(), output_tail=""):
        detail = message
        if command:
            detail += "\ncommand: " + " ".join(str(c) for c in command)
        if output_tail:
            detail += "\noutput (tail):\n" + output_tail
        super().__init__(detail)
        self.command = tuple(str(c) for c in command)
        self.output_tail = output_tail
