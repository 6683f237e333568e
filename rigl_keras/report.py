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

`structure=` (a `rigl_keras.structures.Block` or `NM` for every weight, or
a dict keyed by weight path or layer name, as the callbacks take it) adds
a column saying each weight's structure and whether its mask holds it
(`rigl_keras.structures.check`); for a model without masks, whether its
non-zeros do (a `strip_masks` copy keeps its blocks, up to grown weights
still at 0.0).
"""

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import masking
from rigl_keras import structured_masks
from rigl_keras import structure_arguments
from rigl_keras import structures as structures_lib

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
    params`, 0.0 for an empty weight), `structure` (the weight's
    `rigl_keras.structures` structure, or None: none was given for it, and
    in the total row) and `structure_holds` (whether its mask has that
    structure; None when it has none; in the total row, whether all the
    checked weights hold theirs, None if none was checked).

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
        structure_check: The `rigl_keras.structures.CheckResult` of the
            `structure=` argument (its `violations` say why a weight fails),
            or None without it.
    """

    basis = "masks"
    total_params = 0
    params_sparsity = 0.0
    structure_check = None

    @property
    def sparsity(self):
        return self[-1]["sparsity"] if self else 0.0

    def __str__(self):
        columns = list(_COLUMNS)
        if self.structure_check is not None:
            columns.append(("structure", "Structure"))
        cells = [[title for _, title in columns]]
        for row in self:
            shape = "" if row["shape"] is None else "x".join(map(str, row["shape"]))
            line = [
                row["name"],
                shape,
                f"{row['params']:,}",
                f"{row['active']:,}",
                f"{row['sparsity']:.2%}",
            ]
            if self.structure_check is not None:
                line.append(self._structure_cell(row))
            cells.append(line)
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

        def fmt(line):
            # Name, shape and structure left-aligned, numbers right-aligned.
            parts = [
                value.ljust(width) if i < 2 or i >= len(_COLUMNS) else value.rjust(width)
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
        if self.structure_check is not None and self.structure_check.violations:
            lines.append(str(self.structure_check))
        return "\n".join(lines)

    def _structure_cell(self, row):
        if row["name"] == "total" and row["layer"] is None:
            checked = len(self.structure_check.structures)
            if not checked:
                return ""
            holding = checked - len(self.structure_check.violations)
            return f"{holding} of {checked} hold"
        if row["structure"] is None:
            return "-"
        verdict = "yes" if row["structure_holds"] else "NO"
        return f"{_describe(row['structure'])}: {verdict}"


def _describe(structure):
    """`Block((4, 1))` -> `"4x1 blocks"`, `NM(2, 4)` -> `"2:4"`."""
    if isinstance(structure, structures_lib.Block):
        return "x".join(map(str, structure.shape)) + " blocks"
    if isinstance(structure, structures_lib.NM):
        return f"{structure.n}:{structure.m}"
    return repr(structure)


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
        "structure": None,
        "structure_holds": None,
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


def _nonzero_patterns(weights):
    """The weights with their non-zeros as masks (for a model without masks)."""
    return [
        masking.MaskedWeight(
            w.layer,
            w.variable,
            (_numpy(w.variable) != 0).astype("float32"),
            masking.layer_fan_shape(w.layer, w.variable),
        )
        for w in weights
    ]


def _check_structure(report, model, counted, structure):
    """Fills the rows' structure columns and `report.structure_check`."""
    if report.basis == "masks":
        result = structures_lib.check(model, structure)
    else:
        patterns = _nonzero_patterns(counted)
        result = structured_masks.check_weights(
            patterns, structures_lib.per_weight(patterns, structure)
        )
    for row in report[:-1]:
        row["structure"] = result.structures.get(row["name"])
        if row["structure"] is not None:
            row["structure_holds"] = row["name"] not in result.violations
    if result.structures:
        report[-1]["structure_holds"] = bool(result)
    report.structure_check = result


def sparsity_report(model, structure=None):
    """Counts the active entries of each masked weight of `model`.

    The rows are the masked weights in `masked_weights` order (nested
    layers, attention internals, embeddings, both kernels of a separable
    convolution included), each counted by its mask: the total row's
    sparsity is the `sparsity` the callbacks log. A model without masks is
    counted by the non-zeros of the weights `sparsify` would mask (module
    docstring). `report.params_sparsity` is the same inactive count over
    all the model's parameters.

    With `structure`, each row also says the weight's structure and whether
    its mask holds it (`rigl_keras.structures.check`: whole blocks for
    `Block`, exactly `n` of every `m` for `NM`); without masks, whether its
    non-zeros do. `print(report)` then has a `Structure` column
    (`4x1 blocks: yes`, `2:4: NO`, `-` for a weight without one, and how
    many hold in the total row) and lists the violations with their
    reasons.

    Args:
        model: A built `keras.Model` or layer, sparse or plain (e.g. the
            result of `strip_masks`).
        structure: None, a `rigl_keras.structures.Structure` (or its config)
            for every weight, or a dict `{weight path or unique layer name:
            Structure or None}` (weights not named are not checked): the
            forms `RigLCallback(structure=...)` takes.

    Returns:
        A `SparsityReport`: a list of dicts with keys `name`, `layer`,
        `shape`, `params`, `active`, `sparsity`, `structure` and
        `structure_holds`, one per weight and a final `"total"` row;
        `print(report)` shows an aligned table and the sparsity of the
        masked weights and of all parameters.

    Raises:
        TypeError: If `model` is not a Keras model or layer.
        ValueError: If `model` is not built, or for a bad `structure` (a
            value that is not a structure, a dict key that names no
            weight).

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
    >>> report = sparsity_report(model, structure=rigl_keras.structures.Block((2, 1)))
    >>> report[0]["structure"], report[0]["structure_holds"]
    (Block(shape=(2, 1)), False)
    >>> print(report.structure_check)
    1 of 1 checked masked weights violate their structure:
      m/fc/kernel (Block(shape=(2, 1))): 2 of 4 blocks of 2x1 are partly active.
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
    structure_arguments.validate_argument(structure)
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
    if structure is not None:
        _check_structure(report, model, counted, structure)
    return report
