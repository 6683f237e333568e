"""Per-weight sparsity report of a model: `sparsity_report`.

One definition of sparsity, the one the callbacks log as `sparsity`: the
fraction of zeros over the masks of the masked weights
(`rigl_keras.masked_weights`, each keyed by its variable path). A weight
RigL just grew holds 0.0 but is active in its mask: it counts as active.
Weights left dense (plain layers, biases, normalization parameters) are
not masked weights; they enter only the second number, the sparsity of all
parameters.

A model without masks (a plain model, a `strip_masks` copy) has no mask to
read: there the report counts the weights `sparsify` would mask
(`rigl_keras.masking.kernel_weights`) and takes their non-zero entries as
the active ones. A trained model and its stripped copy then agree on the
sparsity of all parameters, up to the grown weights still at 0.0.
"""

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import masking

__all__ = ["SparsityReport", "sparsity_report"]

_COLUMNS = (
    ("name", "Weight"),
    ("shape", "Shape"),
    ("params", "Params"),
    ("active", "Active"),
    ("sparsity", "Sparsity"),
)


class SparsityReport(list):
    """A list of row dicts that prints as an aligned table with two totals.

    Each row has the keys `name` (the weight's variable path; `"total"` in
    the last row), `layer` (the owning layer's name, `None` in the total
    row), `shape` (tuple of ints, `None` in the total row), `params` (int,
    entries), `active` (int, mask entries equal to 1, or non-zero entries
    for a model without masks) and `sparsity` (float, `1 - active /
    params`, 0.0 for an empty weight).

    Attributes:
        basis: `"masks"` (the rows are the masked weights) or `"zeros"` (the
            model has no mask; the rows are the weights `sparsify` would
            mask, their non-zeros counted as active).
        sparsity: Sparsity of the masked weights (the total row's), equal
            to the callbacks' `sparsity` log.
        total_params: Number of parameters of the model: every weight,
            masks excluded (`count_params()` of its `strip_masks` copy).
        params_sparsity: Inactive entries of the counted weights over
            `total_params`.
    """

    basis = "masks"
    total_params = 0
    params_sparsity = 0.0

    @property
    def sparsity(self):
        return self[-1]["sparsity"] if self else 0.0

    def __str__(self):
        cells = [[title for _, title in _COLUMNS]]
        for row in self:
            shape = "" if row["shape"] is None else "x".join(map(str, row["shape"]))
            cells.append([
                row["name"],
                shape,
                f"{row['params']:,}",
                f"{row['active']:,}",
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
        total = self[-1] if self else {"params": 0, "active": 0}
        what = "masked weights" if self.basis == "masks" else "kernel weights (no masks: zeros)"
        inactive = total["params"] - total["active"]
        lines.append(
            f"Sparsity of {what}: {self.sparsity:.2%} "
            f"({inactive:,} of {total['params']:,} entries inactive)"
        )
        lines.append(
            f"Sparsity of all parameters: {self.params_sparsity:.2%} "
            f"({inactive:,} of {self.total_params:,} parameters inactive)"
        )
        return "\n".join(lines)


def _row(name, layer, shape, params, active):
    # (zeros / entries), computed as the callbacks' log is: the same float.
    sparsity = (params - active) / params if params else 0.0
    return {
        "name": name,
        "layer": layer,
        "shape": shape,
        "params": int(params),
        "active": int(active),
        "sparsity": float(sparsity),
    }


def _numpy(variable):
    return np.asarray(tf.convert_to_tensor(masking.variable_value(variable)).numpy())


def _total_params(model, weights):
    """Entries of every weight of `model` (each once), masks excluded."""
    masks = {id(w.mask) for w in weights if w.mask is not None}
    seen, total = set(), 0
    for variable in model.weights:
        if id(variable) in masks or id(variable) in seen:
            continue
        seen.add(id(variable))
        total += int(np.prod(variable.shape, dtype=np.int64))
    return total


def sparsity_report(model):
    """Counts the active entries of each masked weight of `model`.

    The rows are the masked weights in `masked_weights` order (nested
    layers, attention internals, embeddings, both kernels of a separable
    convolution included), each counted by its mask: the total row's
    sparsity is the `sparsity` the callbacks log. A model without masks is
    counted by the non-zeros of the weights `sparsify` would mask (module
    docstring). `report.params_sparsity` is the same inactive count over
    all the model's parameters.

    Args:
        model: A built `keras.Model` or layer, sparse or plain (e.g. the
            result of `strip_masks`).

    Returns:
        A `SparsityReport`: a list of dicts with keys `name`, `layer`,
        `shape`, `params`, `active` and `sparsity`, one per weight and a
        final `"total"` row; `print(report)` shows an aligned table and the
        sparsity of the masked weights and of all parameters.

    Raises:
        TypeError: If `model` is not a Keras model or layer.
        ValueError: If `model` is not built.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(2, name="fc")], name="m")
    >>> _ = rigl_keras.sparsify(model)
    >>> mask = rigl_keras.masked_weights(model)[0].mask
    >>> _ = mask.assign(np.eye(4, 2, dtype="float32"))
    >>> report = sparsity_report(model)
    >>> report[0]["name"], report[0]["active"], report.sparsity
    ('m/fc/kernel', 2, 0.75)
    >>> report.total_params, round(report.params_sparsity, 2)
    (10, 0.6)
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
    weights = masking.kernel_weights(model)
    counted = [w for w in weights if w.mask is not None]
    report = SparsityReport()
    report.basis = "masks" if counted else "zeros"
    if not counted:
        counted = weights
    for w in counted:
        values = _numpy(w.variable if w.mask is None else w.mask)
        report.append(
            _row(w.key, w.layer.name, tuple(values.shape), values.size,
                 np.count_nonzero(values))
        )
    params = sum(row["params"] for row in report)
    active = sum(row["active"] for row in report)
    report.append(_row("total", None, None, params, active))
    report.total_params = _total_params(model, weights)
    report.params_sparsity = (
        (params - active) / report.total_params if report.total_params else 0.0
    )
    return report
