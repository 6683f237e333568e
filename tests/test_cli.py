"""Tests of the command line (`python -m rigl_keras.experiments.train`, `rigl-train`).

Every test runs the command line in a fresh Python process and reads its
exit status, stdout and stderr. Some load `rigl_keras/experiments/train.py`
on its own, not through the `rigl_keras` package, to see what the command
line itself imports and prints; the others go through `python -m`, which
first imports the `rigl_keras` package, and check that it stays lazy there.

The runs that train use the real MNIST from `TFDS_DATA_DIR` (default
`<repo>/../shared/tfds`), which must be there when `CI` is set.
"""

import importlib.metadata
import json
import os
import re
import textwrap

import pytest

from _helpers import REPO_ROOT  # tests/_helpers.py
from _helpers import python_env
from _helpers import require_real_mnist
from _helpers import run_python
from rigl_keras.experiments import train as train_lib

TRAIN_PY = REPO_ROOT / "rigl_keras" / "experiments" / "train.py"
CLI = "rigl_keras.experiments.train"
TINY_RUN = ["--epochs=1", "--steps_per_epoch=2", "--batch_size=16", "--verbose=0"]

# Runs train.py loaded on its own (module `rigl_train_cli`) as the
# `rigl-train` console script does (its argv[0] is the script), with the
# arguments given, and says on stdout whether TensorFlow got imported.
_STANDALONE = textwrap.dedent("""
    import importlib.util, sys
    path, sys.argv = sys.argv[1], ["rigl-train", *sys.argv[2:]]
    spec = importlib.util.spec_from_file_location("rigl_train_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    try:
        cli.run(list(sys.argv))
    finally:
        print("tensorflow imported:", "tensorflow" in sys.modules)
""")

# A TensorFlow C++ log line (absl's format or TensorFlow's older one), or
# the banner absl prints before its logging is initialized.
_TF_LOG_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]*\] "
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [^\]]*\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions)"
)


def _env(**overrides):
    """The environment of a run: this checkout first, TF's log level unset."""
    return python_env(**{"TF_CPP_MIN_LOG_LEVEL": None, **overrides})


def _run(argv, cwd, env=None, timeout=600):
    return run_python(argv, cwd, env or _env(), timeout)


def _standalone(args, cwd, **env):
    return _run(["-c", _STANDALONE, str(TRAIN_PY), *args], cwd, _env(**env))


def _own_lines(stderr):
    """The lines of `stderr` that are not TensorFlow's C++ logs."""
    return [line for line in stderr.splitlines() if not _TF_LOG_LINE.match(line)]


# ----------------------------------------------------------------------
# --help.


def _check_help(result):
    assert result.returncode == 0, result.stderr[-3000:]
    description = train_lib.__doc__.split("\n\n")[0].strip()
    assert result.stdout.startswith(description + "\n"), result.stdout[:500]
    assert "usage: rigl-train [flags]" in result.stdout
    assert "train.py:" not in result.stdout  # absl's module heading.
    for flag in ("--sparsity", "--method", "--results_json", "--[no]overwrite"):
        assert flag in result.stdout, flag


def test_help_exits_0_with_the_description(tmp_path):
    _check_help(_run(["-m", CLI, "--help"], tmp_path, timeout=300))


def test_console_script_help_exits_0_with_the_description(tmp_path):
    code = f"from {CLI} import run; run(['rigl-train', '--help'])"
    _check_help(_run(["-c", code], tmp_path, timeout=300))
    assert f"rigl-train={CLI}:run" in (REPO_ROOT / "setup.py").read_text()
    installed = importlib.metadata.entry_points(group="console_scripts", name="rigl-train")
    if _installed_from_this_checkout():
        assert [ep.value for ep in installed] == [f"{CLI}:run"]


def _installed_from_this_checkout():
    """Whether the installed `rigl_keras` metadata is this checkout's.

    An editable install of another checkout of the repository carries that
    checkout's `setup.py` entry points, not this one's.
    """
    try:
        url = json.loads(importlib.metadata.distribution("rigl_keras")
                         .read_text("direct_url.json") or "{}").get("url", "")
    except importlib.metadata.PackageNotFoundError:
        return False
    return url.removeprefix("file://") == str(REPO_ROOT)


# ----------------------------------------------------------------------
# Bad flags: one line, exit status 2, before TensorFlow loads.


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity=1.5"], "--sparsity must be in [0, 1); got 1.5"),
        (["--dense_layers=nosuch"],
         "--dense_layers must be names of lenet300_100's layers (fc1, fc2, fc3); got nosuch"),
        (["--model=wrn_22_2", "--wrn_depth=10", "--dense_layers=group1_block2_conv_a"],
         "--dense_layers must be names of wrn_22_2's layers (conv1, group1_block1_conv_a, "
         "group1_block1_conv_b, group1_block1_shortcut, group2_block1_conv_a, "),
        (["--method=magic"],
         "flag --method=magic: value should be one of <dense|small_dense|static|set|snfs|rigl|prune>"),
        (["--metod=rigl"], "Unknown command line flag 'metod'"),
        (["--epochs=0"], "--epochs must be an integer >= 1; got 0"),
        (["stray"], "unexpected arguments: stray"),
        (["--block_shape=4"], "--block_shape must be two integers >= 1 (a,b); got 4"),
        (["--n_m=2,4"], "--sparsity must be 1 - n/m = 0.5 with --n_m 2,4; got 0.9"),
        (["--n_m=2,4", "--sparsity=0.5"],
         "--distribution must be uniform with --n_m; got erk"),
        (["--n_m=3,2", "--sparsity=0.5"], "--n_m must be n,m with n <= m; got 3,2"),
        (["--block_shape=4,1", "--n_m=2,4"], "--block_shape and --n_m exclude each other"),
        (["--method=dense", "--block_shape=4,1"],
         "--method must be a sparse method with --block_shape; got dense"),
    ],
)
def test_bad_flags_exit_2_with_one_line_before_tensorflow(tmp_path, args, message):
    result = _standalone(args, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{CLI}: error: {message}"), lines[0]
    assert result.stdout == "tensorflow imported: False\n"


@pytest.mark.parametrize("flag", ["results_json", "logdir", "tflite_path", "export_dir"])
def test_existing_outputs_exit_2_before_tensorflow(tmp_path, flag):
    target = {"results_json": tmp_path / "r.json", "logdir": tmp_path / "tb" / "results.json",
              "tflite_path": tmp_path / "m.tflite",
              "export_dir": tmp_path / "saved" / "saved_model.pb"}[flag]
    target.parent.mkdir(exist_ok=True)
    target.write_text("old")
    value = target.parent if flag in ("logdir", "export_dir") else target
    shown = value if flag == "export_dir" else target  # What exists.
    result = _standalone([f"--{flag}={value}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"{CLI}: error: --{flag}: {shown} exists; pass --overwrite "
        "to replace it, or choose another path"]
    assert result.stdout == "tensorflow imported: False\n"
    assert target.read_text() == "old"


def test_bad_flag_through_python_m_is_one_line_exit_2(tmp_path):
    # `python -m` imports the rigl_keras package first: it must not load
    # TensorFlow then (`-X importtime` lists every module imported).
    result = _run(["-X", "importtime", "-m", CLI, "--sparsity=1.5"],
                  tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    imported = [l.rsplit("|", 1)[-1].strip() for l in lines if l.startswith("import time:")]
    assert "rigl_keras" in imported and "tensorflow" not in imported, imported
    assert [l for l in lines if not l.startswith("import time:")] == [
        f"{CLI}: error: --sparsity must be in [0, 1); got 1.5"]


def test_library_import_registers_the_keras_classes(tmp_path):
    # Outside the CLI, `import rigl_keras` imports the library, so that
    # `keras.models.load_model` finds its serializable classes.
    code = ("import sys, rigl_keras, keras; "
            "print(keras.saving.get_registered_object('rigl_keras>MaskedDense') "
            "is rigl_keras.MaskedDense, 'tensorflow' in sys.modules)")
    result = _run(["-c", code], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True"]


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(["-m", CLI, f"--data_dir={empty}", *TINY_RUN],
                  tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = _own_lines(result.stderr)
    assert line.startswith(f"{CLI}: error: Cannot find the TFDS dataset 'mnist'")
    assert "--data_dir" in line and "TFDS_DATA_DIR" in line and str(empty) in line
    assert os.listdir(tmp_path) == ["empty"]


# ----------------------------------------------------------------------
# Training runs.


def _repeated(lines):
    seen, repeated = set(), []
    for line in filter(None, lines):
        key = line.split("] ", 1)[-1]  # Without time stamp and thread.
        if key in seen:
            repeated.append(line)
        seen.add(key)
    return repeated


def test_start_up_is_quiet_without_verbosity(tmp_path):
    data_dir = require_real_mnist()
    result = _standalone([f"--data_dir={data_dir}", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "cuInit" not in result.stderr, result.stderr[-3000:]
    assert not _repeated(result.stderr.splitlines()), result.stderr[-3000:]
    assert not [l for l in result.stderr.splitlines() if _TF_LOG_LINE.match(l)
                and l[0] in "IW"], result.stderr[-3000:]


def test_python_m_trains_and_prints_the_summary(tmp_path):
    data_dir = require_real_mnist()
    result = _run(["-m", CLI, f"--data_dir={data_dir}", "--epochs=1",
                   "--steps_per_epoch=5", "--batch_size=16", "--verbose=2",
                   "--results_json=run/results.json"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    path = tmp_path / "run" / "results.json"
    results = json.loads(path.read_text())
    assert os.listdir(tmp_path) == ["run"]
    lines = result.stdout.splitlines()
    labels = ("steps", "test accuracy", "test loss", "sparsity", "train FLOPs",
              "inference FLOPs", "wall time", "results JSON")
    rows = {label: next(l for l in lines if l.startswith(label + " "))
            for label in labels}
    # Aligned: every value starts in the same column.
    columns = {len(row) - len(row[len(label):].lstrip()) for label, row in rows.items()}
    assert len(columns) == 1, rows
    assert rows["steps"].endswith(" 5 (1 epoch x 5, batch 16)"), rows["steps"]
    assert rows["results JSON"].endswith(str(path))
    assert f"{results['test_accuracy']:.4f}" in rows["test accuracy"]
    assert any(l.strip().startswith("fc1/kernel ") for l in lines)  # per weight
    assert results["flags"]["method"] == "rigl"
    # The CUDA probing happens after train.py took over: never shown.
    assert "cuInit" not in result.stderr, result.stderr[-3000:]
    assert not _repeated(result.stderr.splitlines()), result.stderr[-3000:]


def test_short_run_leaves_no_partial_cache_and_writes_nothing(tmp_path):
    data_dir = require_real_mnist()
    # With every TensorFlow log shown (the user chose level 0).
    result = _run(["-m", CLI, f"--data_dir={data_dir}", *TINY_RUN],
                  tmp_path, _env(TF_CPP_MIN_LOG_LEVEL="0"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "did not fully read the dataset being cached" not in result.stderr, (
        result.stderr[-3000:])
    assert "steps" in result.stdout and "results JSON" not in result.stdout
    assert os.listdir(tmp_path) == []  # No ./results.json.
