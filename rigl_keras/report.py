"""Per-layer sparsity report of a model: `sparsity_report`.

The report counts the non-zero entries of each layer's kernel as the layer
computes with it: `kernel * mask` for masked layers, the kernel itself for
plain ones (`Dense`, `Conv2D`, ... with a `kernel` weight). A masked model
and its `strip_masks` copy therefore give the same numbers.
"""

import keras
import numpy as np

from rigl_keras.layers import MaskedLayer

__all__ = ["SparsityReport", "sparsity_report"]

_COLUMNS = (
    ("name", "Layer"),
    ("shape", "Kernel shape"),
    ("params", "Params"),
    ("nonzeros", "Non-zeros"),
    ("sparsity", "Sparsity"),
)


class SparsityReport(list):
    """A list of row dicts that prints as an aligned table.

    Each row has the keys `name` (str), `shape` (tuple of ints, `None` in
    the total row), `params` (int, kernel entries), `nonzeros` (int) and
    `sparsity` (float, `1 - nonzeros / params`, 0.0 for an empty kernel).
    The last row is the total over the layers, named `"total"`.
    """

    def __str__(self):
        cells = [[title for _, title in _COLUMNS]]
        for row in self:
            shape = "" if row["shape"] is None else "x".join(map(str, row["shape"]))
            cells.append([
                row["name"],
                shape,
                f"{row['params']:,}",
                f"{row['nonzeros']:,}",
                f"{row['sparsity']:.2%}",
            ])
        widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]

        def fmt(line):
            # Name and shape left-aligned, numbers right-aligned.
            parts = [
                value.ljust(width) if i < 2 else value.rjust(width)
                for i, (value, width) in enumerate(zip(line, widths))
            ]
            return "  ".join(parts).rstrip()

        rule = "  ".join("-" * width for width in widths)
        lines = [fmt(cells[0]), rule]
        lines += [fmt(line) for line in cells[1:-1]]
        if len(cells) > 1:
            lines += [rule, fmt(cells[-1])]
        return "\n".join(lines)


def _kernel_layers(model):
    """Layers with a kernel (masked or plain), each once, depth first."""
    found = []
    seen = set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        kernel = getattr(layer, "kernel", None)
        if not isinstance(layer, keras.Model) and (
            isinstance(layer, MaskedLayer) or isinstance(kernel, keras.Variable)
        ):
            found.append(layer)
        # pylint: disable-next=protected-access
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child)

    visit(model)
    return found


def _row(name, shape, params, nonzeros):
    sparsity = 1.0 - nonzeros / params if params else 0.0
    return {
        "name": name,
        "shape": shape,
        "params": int(params),
        "nonzeros": int(nonzeros),
        "sparsity": float(sparsity),
    }


def sparsity_report(model):
    """Counts the kernel entries and non-zeros of each layer of `model`.

    Covers every layer with a `kernel` weight, nested ones included: masked
    layers (counting the non-zeros of `kernel * mask`) and plain `Dense`,
    `Conv*`, `EinsumDense`... layers (counting the non-zeros of the kernel).
    Biases and other weights are not counted. Right after a RigL update a
    weight grown at zero is active in the mask but counted as a zero here.

    Args:
        model: A built `keras.Model` or layer, masked or plain (e.g. the
            result of `strip_masks`).

    Returns:
        A `SparsityReport`: a list of dicts with keys `name`, `shape`,
        `params`, `nonzeros` and `sparsity`, one per layer and a final
        `"total"` row; `print(report)` shows an aligned table.

    Raises:
        ValueError: If `model` is not built.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = model.layers[0].kernel.assign(np.eye(4, 2, dtype="float32"))
    >>> report = sparsity_report(model)
    >>> report[0]["nonzeros"], report[-1]["sparsity"]
    (2, 0.75)
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "`sparsity_report` expects a `keras.Model` or layer. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"`sparsity_report` needs a built model, but {model.name!r} is not "
            "built: start it with `keras.Input(shape)`, or call "
            "`model.build(input_shape)` or the model on data first."
        )
    report = SparsityReport()
    for layer in _kernel_layers(model):
        kernel = layer.kernel.numpy()
        if isinstance(layer, MaskedLayer):
            kernel = kernel * layer.mask.numpy().astype(kernel.dtype)
        report.append(
            _row(layer.name, tuple(kernel.shape), kernel.size,
                 np.count_nonzero(kernel))
        )
    report.append(
        _row(
            "total",
            None,
            sum(row["params"] for row in report),
            sum(row["nonzeros"] for row in report),
        )
    )
    return report
