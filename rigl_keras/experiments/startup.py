"""Loading TensorFlow for the command line, without its start-up noise.

TensorFlow's C++ code prints start-up lines on file descriptor 2 while it
is imported and probes for GPUs: on a machine without one, CUDA probing
(`failed call to cuInit`, ...), often twice. `load_tensorflow` imports
TensorFlow, tensorflow-datasets and the library with that descriptor
captured, then replays only the lines at or above `TF_CPP_MIN_LOG_LEVEL`
(set to 2 unless already set), once each, counting the no-GPU messages as
INFO; absl logs from WARNING up.

Example:

    load_tensorflow(verbose=False)  # quiet, as `rigl-train` does
"""

import contextlib
import os
import re
import sys
import tempfile

from absl import logging

__all__ = ["load_tensorflow"]


# A C++ log line of TensorFlow (absl's format, or TensorFlow's older one).
_CPP_LOG_LINE = re.compile(
    r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )[^\]]*\] (.*)$"
)
_SEVERITIES = "IWEF"
# Start-up lines that only say that this machine has no usable GPU, absl's
# banner before its logging is set up and the tail of a CPU feature note:
# counted as INFO, whatever their severity.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "Unable to register cu",
    "To enable the following instructions",
)


def _startup_line_key(line, min_level):
    """A key that is the same for repeats of `line`, or None to drop it."""
    match = _CPP_LOG_LINE.match(line)
    if match:
        severity = _SEVERITIES.index(match.group(1) or match.group(2))
        message = match.group(3)
    else:
        severity, message = None, line
    if any(noise in line for noise in _STARTUP_NOISE):
        severity = 0
    if severity is not None and severity < min_level:
        return None
    return message


@contextlib.contextmanager
def _filtered_stderr(min_level):
    """Captures file descriptor 2 meanwhile; then replays the lines kept.

    A line is kept unless it is a TensorFlow C++ log line (or start-up
    noise, counted as INFO) below `min_level`; a repeated line is kept
    once. Works at the file descriptor level, where TensorFlow's C++ code
    writes.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # No usable stderr: nothing to filter.
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            seen = set()
            for line in capture.read().decode("utf-8", "replace").splitlines():
                key = _startup_line_key(line, min_level)
                if key is not None and key not in seen:
                    seen.add(key)
                    print(line, file=sys.stderr)
            sys.stderr.flush()


def load_tensorflow(verbose):
    """Imports TensorFlow and rigl_keras; quietly unless `verbose`.

    Args:
        verbose: Leave TensorFlow's and absl's logging as they are.
    """
    if verbose:
        _import_libraries()
        return
    logging.set_verbosity(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        min_level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        min_level = 0
    with _filtered_stderr(min_level):
        _import_libraries()


def _import_libraries():
    import tensorflow as tf
    import tensorflow_datasets  # pylint: disable=unused-import
    import rigl_keras  # pylint: disable=unused-import

    tf.config.list_physical_devices()  # TensorFlow probes for GPUs here.
