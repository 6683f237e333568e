"""Per-layer sparsity distributions for dynamic sparse training.

A global target `sparsity` S (fraction of zeros) is split over the layers of a
network. Every function here works on a plain, ordered `{name: kernel_shape}`
dict and uses NumPy/Python only, so it is testable without building a model;
`sparsity_distribution` is the thin adapter from a Keras model.

Let `N_l = prod(shape_l)` be the number of weights of layer `l`. Three methods
are available:

* `"uniform"`: every layer gets sparsity S (layers listed in `dense_layers`
  get 0.0 and are simply left out; the global budget is then not kept).
* `"erk"` (Erdos-Renyi-Kernel, Evci et al. 2020): the density of layer `l`
  is `eps * r_l` with the raw score

      r_l = (sum(shape_l) / prod(shape_l)) ** erk_power_scale.

  For a conv kernel `(kh, kw, c_in, c_out)` this is
  `(kh + kw + c_in + c_out) / (kh * kw * c_in * c_out)`.
* `"er"` (Erdos-Renyi, Mocanu et al. 2018): as ERK but the score only uses
  the last two dimensions `(n_in, n_out)` of the shape:

      r_l = (n_in + n_out) / (n_in * n_out).

  `erk_power_scale` is ignored. For 2-D kernels ER equals ERK with power 1;
  for 1-D shapes (fewer than two dims) ER also falls back to the ERK score.

For ER and ERK, `eps` is solved so that the number of non-zeros over the
layers not kept dense by the user equals that of a uniform distribution
over them:

    eps * sum_{l sparse} r_l * N_l + sum_{l saturated} N_l
        = (1 - S) * sum_{l not in dense_layers} N_l.

Layers in `dense_layers` are dense (sparsity 0.0) and outside this budget,
as in the reference implementation and the paper (ResNet-50 with a dense
first layer at 80%: 80% is the sparsity of the other layers). If
`eps * r_l > 1` for the layer(s) with the largest raw score, those layers
are made dense ("saturated"), stay inside the budget, and `eps` is solved
again, until every density is at most 1 (the loop of google-research/rigl
`get_sparsities_erdos_renyi`). Layer sparsity is `1 - eps * r_l`.

`fan_shapes` (optional) gives the shape each raw score is computed from;
`rigl_keras.masking.MaskedWeight.fan_shape` is the fan-in/fan-out view of
weights that are not plain matrices or conv kernels.

Example:

>>> shapes = {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}
>>> sparsities = distribute_sparsity(shapes, 0.9, method="erk")
>>> sparsities["fc3"]
0.0
>>> layer_zero_counts(shapes, {"fc1": 0.9, "fc2": 0.9, "fc3": 0.0})
{'fc1': 211680, 'fc2': 27000, 'fc3': 0}
"""

import math
import numbers

import numpy as np

from rigl_keras import _checks

__all__ = [
    "distribute_sparsity",
    "layer_zero_counts",
    "sparsity_distribution",
]

_METHODS = ("uniform", "er", "erk")

# A density may exceed 1 by this much through float round-off alone (e.g. a
# single layer at sparsity 1e-38, where 1 - sparsity == 1.0) before the layer
# counts as saturated; such densities are clipped to 1 (sparsity 0.0).
_SATURATION_TOL = 1e-9

# Relative tolerance used by `layer_zero_counts` to absorb float round-off
# (e.g. 0.29 * 100 == 28.999999999999996 counts as 29 zeros).
_ZERO_COUNT_RTOL = 1e-9


def _received(name, value):
    """Formats the Keras-style `Received: name=value` suffix."""
    if isinstance(value, (numbers.Number, np.generic)) and not isinstance(
        value, bool
    ):
        return f"Received: {name}={value}"
    return f"Received: {name}={value!r}"


def _validate_sparsity(sparsity):
    if not _checks.is_real(sparsity) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(
            "Argument `sparsity` must be a real number in [0, 1). "
            + _received("sparsity", sparsity)
        )
    return float(sparsity)


def _validate_method(method):
    if not isinstance(method, str) or method.lower() not in _METHODS:
        allowed = ", ".join(f'"{m}"' for m in _METHODS)
        raise ValueError(
            f"Argument `method` must be one of {allowed}. "
            + _received("method", method)
        )
    return method.lower()


def _validate_erk_power_scale(erk_power_scale):
    if not _checks.is_real(erk_power_scale) or float(erk_power_scale) < 0.0:
        raise ValueError(
            "Argument `erk_power_scale` must be a non-negative real number. "
            + _received("erk_power_scale", erk_power_scale)
        )
    return float(erk_power_scale)


def _validate_shapes(shapes):
    """Returns `{name: tuple_of_python_ints}`, raising on bad input."""
    if not hasattr(shapes, "items") or len(shapes) == 0:
        raise ValueError(
            "Argument `shapes` must be a non-empty dict mapping layer names "
            "to kernel shapes. " + _received("shapes", shapes)
        )
    clean = {}
    for name, shape in shapes.items():
        try:
            dims = tuple(shape)
        except TypeError:
            dims = None
        valid = (
            dims is not None
            and len(dims) > 0
            and all(
                isinstance(d, (numbers.Integral, np.integer))
                and not isinstance(d, (bool, np.bool_))
                and int(d) > 0
                for d in dims
            )
        )
        if not valid:
            raise ValueError(
                "Argument `shapes` must map each layer name to a shape of "
                f"positive integer dims; layer {name!r} has an invalid shape. "
                f"Received: shapes[{name!r}]={shape!r}"
            )
        clean[name] = tuple(int(d) for d in dims)
    return clean


def _validate_dense_layers(dense_layers, shapes):
    if isinstance(dense_layers, str):
        dense_layers = (dense_layers,)
    dense_layers = tuple(dense_layers)
    for name in dense_layers:
        if name not in shapes:
            raise ValueError(
                f"Argument `dense_layers` names layer {name!r}, which is not "
                f"in `shapes` (known layers: {list(shapes)}). "
                + _received("dense_layers", dense_layers)
            )
    return frozenset(dense_layers)


def _raw_score(shape, method, erk_power_scale):
    """Erdos-Renyi raw score `r_l` of one kernel shape."""
    if method == "er" and len(shape) >= 2:
        n_in, n_out = shape[-2:]
        return (n_in + n_out) / (n_in * n_out)
    power = 1.0 if method == "er" else erk_power_scale
    return (sum(shape) / math.prod(shape)) ** power


def _erdos_renyi(shapes, sparsity, method, dense_layers, erk_power_scale, fan_shapes):
    """Solves the ER/ERK scaling `eps`, densifying saturated layers.

    Args:
        shapes: Validated `{name: shape}` dict.
        sparsity: Validated global sparsity in (0, 1).
        method: `"er"` or `"erk"`.
        dense_layers: Frozenset of names forced dense by the user (outside
            the budget).
        erk_power_scale: Validated exponent for the ERK score.
        fan_shapes: `{name: shape}` the raw scores are computed from.

    Returns:
        `{name: sparsity}` in the order of `shapes`.

    Raises:
        ValueError: If the layers forced dense already hold at least the
            whole non-zero budget, so no valid `eps` exists.
    """
    n_params = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {
        name: _raw_score(fan_shapes.get(name, shape), method, erk_power_scale)
        for name, shape in shapes.items()
    }
    budget = (1.0 - sparsity) * sum(
        n for name, n in n_params.items() if name not in dense_layers
    )

    # Each pass either finds a valid eps or moves at least one layer into
    # `dense`, so the loop ends after at most len(shapes) passes.
    dense = set()
    while True:
        sparse = [name for name in shapes if name not in dense and name not in dense_layers]
        # eps * sum_{sparse} r_l * N_l = budget - sum_{dense} N_l = rhs.
        rhs = budget - sum(n_params[name] for name in dense)
        if not sparse or rhs <= 0.0:
            raise ValueError(
                f"Cannot reach sparsity={sparsity}: every layer not in "
                "`dense_layers` would have to be dense. Use a lower "
                "`sparsity` or fewer `dense_layers`. "
                + _received("dense_layers", tuple(sorted(dense_layers)))
            )
        divisor = sum(raw[name] * n_params[name] for name in sparse)
        eps = rhs / divisor
        max_raw = max(raw[name] for name in sparse)
        if eps * max_raw <= 1.0 + _SATURATION_TOL:
            break
        # The layers with the largest score would need a density above 1:
        # make them dense (they stay in the budget) and solve eps again.
        dense.update(name for name in sparse if raw[name] == max_raw)

    return {
        name: 0.0 if name in dense or name in dense_layers
        else max(0.0, 1.0 - eps * raw[name])
        for name in shapes
    }


def distribute_sparsity(
    shapes, sparsity, method="erk", dense_layers=(), erk_power_scale=1.0,
    fan_shapes=None,
):
    """Splits a global sparsity over layers given their kernel shapes.

    Args:
        shapes: Ordered dict `{layer_name: kernel_shape}`; each shape is a
            tuple of positive ints.
        sparsity: Global fraction of zeros, a real number in [0, 1).
        method: One of `"uniform"`, `"er"`, `"erk"` (see the module
            docstring for the formulas).
        dense_layers: Names of layers to keep dense (sparsity 0.0), outside
            the budget; a single string is treated as one name.
        erk_power_scale: Non-negative exponent applied to the ERK raw score;
            values below 1 flatten the distribution, 0 makes it uniform.
            Ignored by `"uniform"` and `"er"`.
        fan_shapes: Optional `{layer_name: shape}` the ER/ERK raw scores are
            computed from (default: `shapes`).

    Returns:
        Dict `{layer_name: sparsity}` with floats in [0, 1), in the order of
        `shapes`. For ER and ERK, summed over the layers not in
        `dense_layers`, `sum_l (1 - s_l) * N_l == (1 - sparsity) * sum_l N_l`
        up to float round-off.

    Raises:
        ValueError: If `shapes` is empty or has a non-positive dim, if
            `sparsity` is not in [0, 1), if `method` is unknown, if
            `dense_layers` names an unknown layer, if `erk_power_scale` is
            negative, or if the dense layers alone exceed the non-zero budget.

    Example:

    >>> distribute_sparsity({"a": (10, 10), "b": (10, 10)}, 0.5, "uniform")
    {'a': 0.5, 'b': 0.5}
    """
    shapes = _validate_shapes(shapes)
    sparsity = _validate_sparsity(sparsity)
    method = _validate_method(method)
    dense_layers = _validate_dense_layers(dense_layers, shapes)
    erk_power_scale = _validate_erk_power_scale(erk_power_scale)

    if sparsity == 0.0:
        return {name: 0.0 for name in shapes}
    if method == "uniform":
        return {
            name: 0.0 if name in dense_layers else sparsity for name in shapes
        }
    return _erdos_renyi(
        shapes, sparsity, method, dense_layers, erk_power_scale,
        dict(fan_shapes or {}),
    )


def sparsity_distribution(
    model, sparsity, method="erk", dense_layers=(), erk_power_scale=1.0
):
    """Splits a global sparsity over the masked weights of a Keras model.

    Only masked weights count (`rigl_keras.sparsify`, `MaskedDense`,
    `MaskedConv2D`); everything else is outside the budget. ER and ERK
    score each weight's fan-in/fan-out view
    (`rigl_keras.masking.MaskedWeight.fan_shape`).

    Args:
        model: A built Keras model with masked weights.
        sparsity: Global fraction of zeros, a real number in [0, 1).
        method: One of `"uniform"`, `"er"`, `"erk"`.
        dense_layers: Masked weights to keep dense (outside the budget):
            variable paths, or layer names that own one masked weight.
        erk_power_scale: Non-negative exponent of the ERK raw score.

    Returns:
        Dict `{variable path: sparsity}` for every masked weight, in
        `rigl_keras.masking.masked_weights` order.

    Raises:
        ValueError: If the model is not built or has no masked weight, if
            `dense_layers` names no masked weight, or for any argument
            error listed in `distribute_sparsity`.

    Example:

    ```python
    model = keras.Sequential([keras.Input((784,)),
        keras.layers.Dense(300, name="fc1"), keras.layers.Dense(10, name="fc2")],
        name="mlp")
    rigl_keras.sparsify(model)
    sparsity_distribution(model, 0.9, method="erk")
    # {'mlp/fc1/kernel': 0.9114..., 'mlp/fc2/kernel': 0.0}
    ```
    """
    # Imported here so this module stays importable (and testable) without
    # the Keras layer code.
    from rigl_keras import masking  # pylint: disable=import-outside-toplevel

    if not getattr(model, "built", False):
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not built. Build it "
            "(e.g. with `keras.Input` or `model.build(input_shape)`) or call "
            "it on data first, so that kernel shapes are known."
        )
    weights = masking.masked_weights(model)
    if not weights:
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} has no masked weight: "
            "call `rigl_keras.sparsify(model)` first."
        )
    if isinstance(dense_layers, str):
        dense_layers = (dense_layers,)
    dense = masking.resolve_keys(weights, tuple(dense_layers), "dense_layers")
    return distribute_sparsity(
        {w.key: w.shape for w in weights},
        sparsity,
        method=method,
        dense_layers=tuple(dense.values()),
        erk_power_scale=erk_power_scale,
        fan_shapes={w.key: w.fan_shape for w in weights},
    )


def layer_zero_counts(shapes, sparsities):
    """Number of zeros per layer, `floor(s_l * N_l)`.

    The product `s_l * N_l` is snapped to the nearest integer when it lies
    within a relative 1e-9 of it, before flooring, so float round-off does
    not lose a zero (`0.29 * 100 == 28.999999999999996` gives 29, and
    `0.7 * 10 == 7.000000000000001` gives 7).

    Args:
        shapes: Dict `{layer_name: kernel_shape}`.
        sparsities: Dict `{layer_name: sparsity}` with values in [0, 1];
            every name must be in `shapes`.

    Returns:
        Dict `{layer_name: n_zeros}` of Python ints, in the order of
        `sparsities`.

    Raises:
        ValueError: If a name in `sparsities` is not in `shapes`, a
            sparsity is outside [0, 1], or a shape is invalid.

    Example:

    >>> layer_zero_counts({"fc": (10, 10)}, {"fc": 0.29})
    {'fc': 29}
    """
    shapes = _validate_shapes(shapes)
    counts = {}
    for name, s in sparsities.items():
        if name not in shapes:
            raise ValueError(
                f"Argument `sparsities` names layer {name!r}, which is not "
                f"in `shapes` (known layers: {list(shapes)})."
            )
        if not _checks.is_real(s) or not 0.0 <= float(s) <= 1.0:
            raise ValueError(
                f"Argument `sparsities` must hold real numbers in [0, 1]. "
                f"Received: sparsities[{name!r}]={s!r}"
            )
        n = math.prod(shapes[name])
        exact = float(s) * n
        nearest = round(exact)
        if abs(exact - nearest) <= _ZERO_COUNT_RTOL * max(1.0, exact):
            counts[name] = int(nearest)
        else:
            counts[name] = math.floor(exact)
    return counts
