"""FLOPs accounting as the RigL paper (Evci et al. 2020, appendix H) does it.

Theoretical counts, assuming sparse kernels: a connection that is masked out
costs nothing. One multiply-add is 2 FLOPs, so one example's forward pass
through a counted weight costs

    2 * (active weights) * (positions)

where the active weights are the mask's ones for a masked weight and the
non-zero entries otherwise, and the positions are how often each weight is
used per example. Counted, per weight (keyed by variable path, as
`rigl_keras.masked_weights`), in plain, sparsified (`rigl_keras.sparsify`)
and masked (`MaskedDense`, `MaskedConv2D`) layers alike:

| layer | weights | positions |
| --- | --- | --- |
| `Dense`, `MaskedDense` | `kernel` | the product of the input's dims between batch and features (1 for a batch of vectors) |
| `EinsumDense` (`MultiHeadAttention`'s query, key, value and output) | `kernel` | the product of the input's non-batch dims that are not kernel axes (the sequence length); for an attention output, the query's |
| `Conv1D/2D/3D`, `MaskedConv2D` | `kernel` | the output's spatial positions |
| `DepthwiseConv1D/2D` | `kernel` | the output's spatial positions |
| `SeparableConv1D/2D` | `depthwise_kernel`, `pointwise_kernel` | the output's spatial positions, for each |

Not counted: transposed convolutions, embeddings (a lookup), recurrent
layers, attention scores and the weighted sum of values (no weights),
pooling, normalization, biases and activations. Positions need fixed input
sizes (a sequence length of `None` raises).

Training FLOPs per step are reported RELATIVE TO DENSE training of the same
(or a reference) network, with `f_D` / `f_S` the dense / sparse inference
FLOPs of one example (the backward pass costs twice the forward pass: one
product for the activations' gradient and one for the weights'):

* dense:                          3 f_D
* static sparse, SET:             3 f_S
* RigL (update every ΔT steps):   (3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)
  (on an update step the weights' gradient is computed densely)
* SNFS:                           2 f_S + f_D (dense gradient every step)
* small dense:                    3 f_D of the small model
* gradual pruning:                the mean over training steps of
                                  3 f(s_t), with each weight's density
                                  following the pruning schedule.

A masked implementation such as this package's executes dense matmuls
whatever the mask: `executed_flops` reports those numbers to put beside the
theoretical ones.

Example:

>>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300),
...                           keras.layers.Dense(100), keras.layers.Dense(10)])
>>> sum(inference_flops(model, sparse=False).values())
532400
"""

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import _checks
from rigl_keras import layers as layers_lib
from rigl_keras import masking
from rigl_keras import schedules

__all__ = [
    "METHODS",
    "executed_flops",
    "flops_report",
    "inference_flops",
    "pruning_training_flops",
    "rigl_training_flops",
    "training_flops",
]

#: Method names understood by `training_flops` and `flops_report`.
METHODS = ("dense", "static", "set", "rigl", "snfs", "small_dense", "pruning")

_PRUNING_KWARGS = ("begin_step", "end_step", "total_steps", "initial_sparsity", "power")


def _counted_types():
    layers = keras.layers
    return (
        layers.Dense, layers.EinsumDense, layers.Conv1D, layers.Conv2D,
        layers.Conv3D, layers.DepthwiseConv1D, layers.DepthwiseConv2D,
        layers.SeparableConv1D, layers.SeparableConv2D,
        layers_lib.MaskedDense, layers_lib.MaskedConv2D,
    )


def _is_conv(layer):
    layers = keras.layers
    return not isinstance(
        layer, (layers.Dense, layers.EinsumDense, layers_lib.MaskedDense)
    )


def _input_shape(layer):
    """The input shape `layer` was built with (its first call's), or `None`."""
    shape = (layer.get_build_config() or {}).get("input_shape")
    if shape is None:
        try:
            shape = tuple(layer.input.shape)
        except (AttributeError, ValueError):
            return None
    return tuple(shape)


def _einsum_axes(axes, rank):
    """One axis letter (or `None` within an ellipsis) per dim of a shape."""
    if "..." not in axes:
        return list(axes)
    head, tail = axes.split("...")
    return list(head) + [None] * (rank - len(head) - len(tail)) + list(tail)


def _product(layer, dims, what):
    if any(d is None for d in dims):
        raise ValueError(
            f"Layer '{layer.name}' has {what} {tuple(dims)} with unknown dims; "
            "FLOPs per example need a fixed input size (build the model "
            "with `keras.Input` of a fixed shape)."
        )
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def _einsum_positions(layer, parent):
    inputs, rest = layer.equation.split(",")
    kernel_axes = rest.split("->")[0]
    shape = _input_shape(layer)
    if shape is None:
        raise ValueError(f"The input shape of layer '{layer.name}' is unknown.")
    letters = _einsum_axes(inputs, len(shape))
    dims = [d for axis, d in zip(letters[1:], shape[1:]) if axis is None or axis not in kernel_axes]
    if any(d is None for d in dims) and isinstance(parent, keras.layers.MultiHeadAttention):
        # MultiHeadAttention builds its output projection for any length:
        # it runs at every query position.
        shapes = (parent.get_build_config() or {}).get("shapes_dict", {})
        if "query_shape" in shapes:
            dims = list(shapes["query_shape"][1:-1])
    return _product(layer, dims, "non-kernel input dims")


def _positions(layer, parent):
    """How often per example each kernel entry of `layer` is used."""
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_positions(layer, parent)
    shape = _input_shape(layer)
    if not _is_conv(layer):
        if shape is None:
            return 1
        return _product(layer, list(shape[1:-1]), "input shape")
    if shape is not None:
        output = tuple(layer.compute_output_shape(shape))
    else:
        try:
            output = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            raise ValueError(  # pylint: disable=raise-missing-from
                f"The output shape of layer '{layer.name}' is unknown: count the "
                "FLOPs of a model built with `keras.Input` (Sequential or "
                "functional), so that every convolution's output size is known."
            )
    if layer.data_format == "channels_first":
        spatial = output[2:]
    else:
        spatial = output[1:-1]
    return _product(layer, list(spatial), "output shape")


def _counted_weights(model):
    """`[(weight, positions)]`: the `kernel_weights` of the counted layers."""
    counted = _counted_types()
    parents = {}
    for layer, ancestors in masking.walk_layers(model):
        if isinstance(layer, counted):
            if not layer.built:
                raise ValueError(
                    f"Layer '{layer.name}' of model '{model.name}' is not built."
                )
            parents[id(layer)] = ancestors[-1] if ancestors else None
    positions = {}
    found = []
    for weight in masking.kernel_weights(model):
        layer = weight.layer
        if id(layer) not in parents:
            continue
        if id(layer) not in positions:
            positions[id(layer)] = _positions(layer, parents[id(layer)])
        found.append((weight, positions[id(layer)]))
    return found


def _weight_count(weight, sparse):
    if not sparse:
        return int(np.prod(weight.variable.shape, dtype=np.int64))
    if weight.mask is not None:
        # The mask, not the kernel, says what is connected: a connection
        # RigL just grew holds 0.0 but is active.
        return int(np.count_nonzero(_numpy(weight.mask)))
    return int(np.count_nonzero(_numpy(weight.variable)))


def _numpy(variable):
    return tf.convert_to_tensor(masking.variable_value(variable)).numpy()


def inference_flops(model, sparse=True):
    """FLOPs of one example's forward pass, per counted weight.

    Theoretical, assuming sparse kernels: `2 * weights * positions` per
    weight of the layers the module docstring lists, where `weights` is
    the number of active entries (mask entries equal to 1 for a masked
    weight, non-zero entries otherwise) if `sparse`, all entries otherwise.
    A layer called at several sites is counted once, at its first call.

    Args:
        model: A built Keras model (with `keras.Input` of a fixed shape, so
            that the positions are known).
        sparse: Count only active weights (`True`) or all weights.

    Returns:
        Dict `{variable path: flops}` of Python ints, in
        `rigl_keras.masking.kernel_weights` order.

    Raises:
        ValueError: If the model or a counted layer is not built, or a
            count needs a dim that is unknown.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...                           keras.layers.Dense(3, name="fc")], name="m")
    >>> inference_flops(model)
    {'m/fc/kernel': 24}
    """
    if not getattr(model, "built", False):
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not built. Build it "
            "with `keras.Input` so that kernel and output shapes are known."
        )
    return {
        weight.key: 2 * _weight_count(weight, sparse) * positions
        for weight, positions in _counted_weights(model)
    }


def _total(model, sparse):
    total = sum(inference_flops(model, sparse=sparse).values())
    if total == 0:
        raise ValueError(
            f"Model '{model.name}' has no layer whose FLOPs are counted "
            "(Dense, EinsumDense, Conv*D, DepthwiseConv*D, SeparableConv*D)."
        )
    return total


def rigl_training_flops(sparse_flops, dense_flops, update_freq):
    """RigL's training FLOPs per example and step, absolute.

    `(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)`: on one step in `ΔT + 1` the
    weights' gradient is dense. Theoretical, assuming sparse kernels.

    Args:
        sparse_flops: `f_S`, sparse inference FLOPs of one example.
        dense_flops: `f_D`, dense inference FLOPs of one example.
        update_freq: `ΔT`, steps between mask updates (>= 1).

    Returns:
        A float.

    Example:

    >>> rigl_training_flops(10.0, 100.0, update_freq=1)
    75.0
    """
    if not _checks.is_int(update_freq) or update_freq < 1:
        raise ValueError(
            "`update_freq` must be an integer >= 1. "
            f"Received: update_freq={update_freq!r}"
        )
    return (3.0 * sparse_flops * update_freq + 2.0 * sparse_flops + dense_flops) / (
        update_freq + 1
    )


def _pruning_densities(dense_flops, final_sparse_flops, initial_sparsity):
    """Per-layer final and initial sparsities implied by the FLOPs ratios."""
    final, initial = {}, {}
    for name, dense in dense_flops.items():
        if name not in final_sparse_flops:
            raise ValueError(
                f"`final_sparse_flops` has no entry for weight {name!r}. "
                f"Received: final_sparse_flops={final_sparse_flops!r}"
            )
        if dense <= 0 or not 0 <= final_sparse_flops[name] <= dense:
            raise ValueError(
                f"Layer {name!r} needs 0 <= final sparse FLOPs <= dense FLOPs "
                f"and dense FLOPs > 0. Received: dense_flops[{name!r}]={dense}, "
                f"final_sparse_flops[{name!r}]={final_sparse_flops[name]}"
            )
        final[name] = 1.0 - final_sparse_flops[name] / dense
        initial[name] = min(initial_sparsity, final[name])
    return final, initial


def pruning_training_flops(
    dense_flops,
    final_sparse_flops,
    begin_step,
    end_step,
    total_steps,
    initial_sparsity=0.0,
    update_freq=1,
    power=3,
    reference_flops=None,
):
    """Gradual pruning's training FLOPs, relative to dense training.

    Theoretical, assuming sparse kernels. During training step `t`
    (`t = 0 .. total_steps - 1`, the step taken when
    `optimizer.iterations == t`) layer `l` has the sparsity set by the last
    pruning step `u <= t` of `rigl_keras.GradualPruningCallback`:

        s_u,l = s_f,l + (s_i,l - s_f,l) * (1 - p_u) ** power,
        p_u = clip((u - begin_step) / (end_step - begin_step), 0, 1),

    with `u = begin_step + k * update_freq` (or `end_step`), `s_i,l` applied
    before `begin_step`, `s_f,l = 1 - final_sparse_flops[l] /
    dense_flops[l]` and `s_i,l = min(initial_sparsity, s_f,l)`. The result is

        mean_t sum_l 3 * dense_flops[l] * (1 - s_u(t),l)  /  (3 * f_ref)

    with `f_ref = reference_flops` or `sum(dense_flops.values())`. The exact
    count of zeros (a floor) is ignored here.

    Args:
        dense_flops: `{weight: dense inference FLOPs}` per example (as
            `inference_flops(model, sparse=False)` returns).
        final_sparse_flops: `{weight: inference FLOPs at the final sparsity}`.
        begin_step: First step of the pruning window (>= 0).
        end_step: Step at which the final sparsity is reached
            (> begin_step).
        total_steps: Number of training steps (>= 1).
        initial_sparsity: `s_i` in `[0, 1)`.
        update_freq: Steps between pruning steps (>= 1).
        power: Exponent of the schedule (>= 1).
        reference_flops: Dense inference FLOPs of the network training is
            compared with; defaults to `sum(dense_flops.values())`.

    Returns:
        A float, training FLOPs relative to dense training.

    Raises:
        ValueError: For an argument outside its range or mismatched dicts.

    Example:

    >>> round(pruning_training_flops({"fc": 100}, {"fc": 10}, begin_step=0,
    ...                              end_step=1, total_steps=2), 3)
    0.55
    """
    if not _checks.is_int(total_steps) or total_steps < 1:
        raise ValueError(
            "`total_steps` must be an integer >= 1. "
            f"Received: total_steps={total_steps!r}"
        )
    if not _checks.is_int(update_freq) or update_freq < 1:
        raise ValueError(
            "`update_freq` must be an integer >= 1. "
            f"Received: update_freq={update_freq!r}"
        )
    if not _checks.is_real(initial_sparsity) or not 0.0 <= initial_sparsity < 1.0:
        raise ValueError(
            "`initial_sparsity` must be a number in [0, 1). "
            f"Received: initial_sparsity={initial_sparsity!r}"
        )
    # Validates begin_step, end_step and power the same way the callback's
    # schedules do.
    schedule = schedules.PolynomialSparsity(
        0.0, begin_step, end_step, power=power
    )
    begin, end = schedule.begin_step, schedule.end_step
    final, initial = _pruning_densities(dense_flops, final_sparse_flops, initial_sparsity)
    reference = _check_reference(reference_flops, sum(dense_flops.values()))

    t = np.arange(total_steps, dtype=np.float64)
    last_update = begin + np.floor((t - begin) / update_freq) * update_freq
    last_update = np.minimum(last_update, end)
    # The callback prunes at end_step even off the update_freq grid.
    last_update = np.where(t >= end, end, last_update)
    progress = np.clip((last_update - begin) / (end - begin), 0.0, 1.0)
    decay = (1.0 - progress) ** power
    decay = np.where(t < begin, 1.0, decay)
    per_step = np.zeros(total_steps, np.float64)
    for name, dense in dense_flops.items():
        sparsity = final[name] + (initial[name] - final[name]) * decay
        per_step += 3.0 * dense * (1.0 - sparsity)
    return float(per_step.mean() / (3.0 * reference))


def _check_reference(reference_flops, default):
    if reference_flops is None:
        return float(default)
    if isinstance(reference_flops, keras.Model):
        return float(_total(reference_flops, sparse=False))
    if not _checks.is_real(reference_flops) or reference_flops <= 0:
        raise ValueError(
            "`reference_flops` must be a positive number (dense inference "
            "FLOPs of one example), a Keras model, or None. "
            f"Received: reference_flops={reference_flops!r}"
        )
    return float(reference_flops)


def training_flops(model, method, update_freq=100, reference_flops=None, **kwargs):
    """Training FLOPs per step relative to dense training (dense = 1.0).

    Theoretical, assuming sparse kernels; see the module docstring for the
    formula of each method. `f_S` is the model's sparse inference FLOPs
    (its masks as they are now), `f_D` its dense ones; the result is
    divided by `3 * f_ref`, the dense training FLOPs of the reference
    network (`reference_flops`, by default the model itself).

    Args:
        model: A built Keras model; for `"pruning"`, with its final masks.
        method: One of `METHODS`: `"dense"`, `"static"`, `"set"`,
            `"rigl"`, `"snfs"`, `"small_dense"`, `"pruning"`.
        update_freq: ΔT of RigL, or the pruning frequency of `"pruning"`.
        reference_flops: Dense inference FLOPs per example of the network
            to compare with (a number or a Keras model). Required for
            `"small_dense"` (the big dense network); defaults to `f_D`.
        **kwargs: For `"pruning"` only: `end_step` and `total_steps`
            (required), `begin_step` (0), `initial_sparsity` (0.0),
            `power` (3); see `pruning_training_flops`.

    Returns:
        A float.

    Raises:
        ValueError: For an unknown method, a missing or unexpected keyword
            argument, or a model that cannot be counted.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> training_flops(model, "snfs")
    1.0
    """
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS}. Received: method={method!r}"
        )
    if method != "pruning" and kwargs:
        raise ValueError(
            f"Keyword arguments {sorted(kwargs)} are only used with "
            f"method='pruning'. Received: method={method!r}"
        )
    if method == "small_dense" and reference_flops is None:
        raise ValueError(
            "method='small_dense' needs `reference_flops`: the dense "
            "inference FLOPs (or the model) of the large network it is "
            "compared with. Received: reference_flops=None"
        )
    f_dense = _total(model, sparse=False)
    f_ref = _check_reference(reference_flops, f_dense)
    if method in ("dense", "small_dense"):
        return 3.0 * f_dense / (3.0 * f_ref)
    if method == "pruning":
        unknown = sorted(set(kwargs) - set(_PRUNING_KWARGS))
        if unknown:
            raise ValueError(
                f"Unknown keyword arguments {unknown} for method='pruning'; "
                f"allowed: {_PRUNING_KWARGS}."
            )
        for name in ("end_step", "total_steps"):
            if name not in kwargs:
                raise ValueError(
                    f"method='pruning' needs `{name}` (see "
                    "pruning_training_flops)."
                )
        return pruning_training_flops(
            inference_flops(model, sparse=False),
            inference_flops(model, sparse=True),
            kwargs.get("begin_step", 0),
            kwargs["end_step"],
            kwargs["total_steps"],
            initial_sparsity=kwargs.get("initial_sparsity", 0.0),
            update_freq=update_freq,
            power=kwargs.get("power", 3),
            reference_flops=f_ref,
        )
    f_sparse = float(_total(model, sparse=True))
    if method in ("static", "set"):
        flops = 3.0 * f_sparse
    elif method == "rigl":
        flops = rigl_training_flops(f_sparse, f_dense, update_freq)
    else:  # snfs
        flops = 2.0 * f_sparse + f_dense
    return flops / (3.0 * f_ref)


def executed_flops(model):
    """FLOPs a masked implementation executes per example, whatever the mask.

    `MaskedDense` / `MaskedConv2D` run dense matmuls and convolutions (the
    mask zeroes weights, it does not skip them), so inference costs `f_D`
    and a training step `3 f_D`, with the counting rules of
    `inference_flops` (the elementwise mask multiplies, once per step and
    not per example, are not counted).

    Args:
        model: A built Keras model.

    Returns:
        Dict `{"inference": f_D, "training": 3 * f_D}` of Python ints.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> executed_flops(model)
    {'inference': 24, 'training': 72}
    """
    f_dense = _total(model, sparse=False)
    return {"inference": f_dense, "training": 3 * f_dense}


def flops_report(model, method, update_freq=100, reference_flops=None, **kwargs):
    """A JSON-ready summary of theoretical and executed FLOPs.

    Args:
        model: A built Keras model (for `"pruning"`, with its final masks).
        method: One of `METHODS`.
        update_freq: As in `training_flops`.
        reference_flops: As in `training_flops`.
        **kwargs: As in `training_flops` (pruning schedule).

    Returns:
        A dict of Python numbers:

        * `inference_flops`: sparse inference FLOPs / reference dense
          inference FLOPs (theoretical, assuming sparse kernels);
        * `train_flops`: training FLOPs relative to dense training
          (theoretical, `training_flops`);
        * `executed_inference_flops`, `executed_train_flops`: the same
          ratios for what a masked implementation executes;
        * `sparse_inference_flops_per_example`,
          `dense_inference_flops_per_example`,
          `reference_inference_flops_per_example`: absolute counts;
        * `method`, `update_freq`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> flops_report(model, "dense")["train_flops"]
    1.0
    """
    train = training_flops(
        model, method, update_freq=update_freq, reference_flops=reference_flops, **kwargs
    )
    f_dense = _total(model, sparse=False)
    f_sparse = sum(inference_flops(model, sparse=True).values())
    if method in ("dense", "small_dense"):
        f_sparse = f_dense
    f_ref = _check_reference(reference_flops, f_dense)
    executed = executed_flops(model)
    return {
        "method": method,
        "update_freq": update_freq,
        "inference_flops": f_sparse / f_ref,
        "train_flops": train,
        "executed_inference_flops": executed["inference"] / f_ref,
        "executed_train_flops": executed["training"] / (3.0 * f_ref),
        "sparse_inference_flops_per_example": int(f_sparse),
        "dense_inference_flops_per_example": int(f_dense),
        "reference_inference_flops_per_example": int(f_ref) if f_ref.is_integer() else f_ref,
    }
