"""Model builders of the RigL paper's small-scale experiments.

* `lenet300_100`: the MLP 784-300-100-10 (LeCun et al. 1998), 266,610
  parameters with biases on MNIST.
* `lenet5`: the Caffe variant of LeNet-5 (conv 20 and 50 filters 5x5, valid,
  each followed by 2x2 max pooling; fully connected 500 and the classifier),
  431,080 parameters on MNIST. Like the RigL reference code (TF-Slim layers,
  whose default activation is ReLU) the convolutions and the hidden fully
  connected layer use ReLU; Caffe's original has no activation after the
  convolutions. The parameter count is the same either way.
* `wrn`: the pre-activation Wide ResNet of Zagoruyko & Komodakis (2016) for
  CIFAR, `WRN-depth-width`; the paper's model is `wrn(depth=22, width=2)`.

Every builder returns a `keras.Model` (functional) whose convolutions and
fully connected layers are `rigl_keras.MaskedConv2D` / `MaskedDense` when
`masked=True` and plain `Conv2D` / `Dense` otherwise. All of them are masked,
including the first convolution and the classifier: the sparsity
distribution decides their share of the budget (ERK keeps small layers such
as LeNet-300-100's last one dense by itself). To keep a layer dense as the
RigL paper does for ImageNet ResNet-50's first convolution, pass its name to
`RigLCallback(dense_layers=...)` (`--dense_layers` on the command line); the
names are stable: `fc1`, `fc2`, ... for the LeNets, `conv1`, `group{g}_block{b}_
{conv_a,conv_b,shortcut}` and `logits` for the Wide ResNet.

Weight decay: `weight_decay=wd` adds `keras.regularizers.L2(wd / 2)` to every
kernel (not to biases nor batch-norm parameters). Keras' `L2(l)` adds
`l * sum(w ** 2)` to the loss, so the gradient gains `wd * w`: with SGD this
is exactly the classic `w <- w - lr * (grad + wd * w)` of the RigL reference
code (`tf.nn.l2_loss`-based decay). With Adam it is L2 regularization, not
AdamW's decoupled decay. Inactive (masked) weights are 0 and get no decay.

Widths: `width_multiplier` scales every hidden width (the classifier keeps
`num_classes` units) to `max(1, round(base * multiplier))`; `widths` gives
them explicitly (see `base_widths`). `small_dense_widths` solves the widths
of the "Small-Dense" baseline: a dense model with as many kernel weights as
the sparse one has non-zeros.

Example:

>>> model = lenet300_100()
>>> sum(int(np.prod(w.shape)) for w in model.trainable_weights)
266610
>>> [layer.name for layer in rigl_keras.masked_layers(model)]
['fc1', 'fc2', 'fc3']
"""

import collections
import math

import keras

from rigl_keras import layers as layers_lib
from rigl_keras import masking

__all__ = [
    "ARCHITECTURES",
    "SmallDenseSolution",
    "base_widths",
    "build",
    "kernel_param_count",
    "kernel_shapes",
    "lenet300_100",
    "lenet5",
    "small_dense_widths",
    "wrn",
]

ARCHITECTURES = ("lenet300_100", "lenet5", "wrn")

# Batch-norm settings of the Wide ResNet reference implementation.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
_BISECTION_STEPS = 60


def _scale(base, multiplier):
    """`max(1, round(base * multiplier))`, rounding halves up."""
    return max(1, int(math.floor(base * multiplier + 0.5)))


def _check_positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )


def _check_input_shape(input_shape, min_size=1):
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        raise ValueError(
            "`input_shape` must be (height, width, channels) with positive "
            f"integer dims. Received: input_shape={input_shape!r}"
        )
    if min(shape[:2]) < min_size:
        raise ValueError(
            f"`input_shape` must be at least {min_size}x{min_size} pixels for "
            f"this model. Received: input_shape={input_shape!r}"
        )
    return shape


def _check_wrn_depth(depth):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (
        depth - 4
    ) % 6:
        raise ValueError(
            "`depth` of a Wide ResNet must be 6 * n + 4 with n >= 1 (10, 16, "
            f"22, 28, ...). Received: depth={depth!r}"
        )


def _resolve_widths(architecture, widths, width_multiplier, base):
    _check_positive_number("width_multiplier", width_multiplier)
    if widths is None:
        return tuple(_scale(b, width_multiplier) for b in base)
    widths = tuple(widths)
    if len(widths) != len(base) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        raise ValueError(
            f"`widths` of {architecture} must be {len(base)} positive integers "
            f"(default {base}). Received: widths={widths!r}"
        )
    return widths


def _kernel_kwargs(weight_decay):
    if isinstance(weight_decay, bool) or not isinstance(
        weight_decay, (int, float)
    ) or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(
            "`weight_decay` must be a number >= 0. "
            f"Received: weight_decay={weight_decay!r}"
        )
    regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    return {"kernel_regularizer": regularizer}


def _dense(masked, units, **kwargs):
    cls = layers_lib.MaskedDense if masked else keras.layers.Dense
    return cls(units, **kwargs)


def _conv(masked, filters, kernel_size, **kwargs):
    cls = layers_lib.MaskedConv2D if masked else keras.layers.Conv2D
    return cls(filters, kernel_size, **kwargs)


# ----------------------------------------------------------------------
# Per-architecture width slots and kernel shapes (pure Python: the
# small-dense solver evaluates them many times without building a model).


def _lenet300_100_base():
    return (300, 100)


def _lenet300_100_shapes(widths, input_shape, num_classes):
    h1, h2 = widths
    return {
        "fc1": (math.prod(input_shape), h1),
        "fc2": (h1, h2),
        "fc3": (h2, num_classes),
    }


def _lenet5_base():
    return (20, 50, 500)


def _lenet5_flat_size(input_shape):
    height, width = input_shape[:2]
    for _ in range(2):  # conv 5x5 valid, then max-pool 2x2.
        height, width = (height - 4) // 2, (width - 4) // 2
    return height * width


def _lenet5_shapes(widths, input_shape, num_classes):
    c1, c2, f1 = widths
    return {
        "conv1": (5, 5, input_shape[2], c1),
        "conv2": (5, 5, c1, c2),
        "fc1": (_lenet5_flat_size(input_shape) * c2, f1),
        "fc2": (f1, num_classes),
    }


def _wrn_base(depth=22, width=2):
    return (16, 16 * width, 32 * width, 64 * width)


def _wrn_blocks(depth, widths):
    """Yields `(name, in_channels, out_channels, stride)` of every block."""
    blocks_per_group = (depth - 4) // 6
    channels = widths[0]
    for group, (out_channels, stride) in enumerate(
        zip(widths[1:], (1, 2, 2)), start=1
    ):
        for block in range(1, blocks_per_group + 1):
            yield (
                f"group{group}_block{block}",
                channels,
                out_channels,
                stride if block == 1 else 1,
            )
            channels = out_channels


def _wrn_shapes(widths, input_shape, num_classes, depth=22, width=2):
    del width  # Already in `widths`.
    shapes = {"conv1": (3, 3, input_shape[2], widths[0])}
    for name, c_in, c_out, stride in _wrn_blocks(depth, widths):
        shapes[f"{name}_conv_a"] = (3, 3, c_in, c_out)
        shapes[f"{name}_conv_b"] = (3, 3, c_out, c_out)
        if c_in != c_out or stride != 1:
            shapes[f"{name}_shortcut"] = (1, 1, c_in, c_out)
    shapes["logits"] = (widths[-1], num_classes)
    return shapes


_Architecture = collections.namedtuple("_Architecture", ["base", "shapes"])

_ARCHITECTURES = {
    "lenet300_100": _Architecture(_lenet300_100_base, _lenet300_100_shapes),
    "lenet5": _Architecture(_lenet5_base, _lenet5_shapes),
    "wrn": _Architecture(_wrn_base, _wrn_shapes),
}


def _architecture(name):
    if name not in _ARCHITECTURES:
        raise ValueError(
            f"`architecture` must be one of {ARCHITECTURES}. "
            f"Received: architecture={name!r}"
        )
    return _ARCHITECTURES[name]


def base_widths(architecture, **arch_kwargs):
    """The full-size width slots of an architecture.

    Args:
        architecture: One of `ARCHITECTURES`.
        **arch_kwargs: `depth` and `width` for `"wrn"`.

    Returns:
        A tuple of ints: `(300, 100)` hidden units for `"lenet300_100"`;
        `(20, 50, 500)` (conv1 filters, conv2 filters, fc1 units) for
        `"lenet5"`; `(16, 16 * width, 32 * width, 64 * width)` (stem and the
        three groups) for `"wrn"`.

    Raises:
        ValueError: For an unknown architecture.

    Example:

    >>> base_widths("wrn", depth=22, width=2)
    (16, 32, 64, 128)
    """
    return _architecture(architecture).base(**arch_kwargs)


# ----------------------------------------------------------------------
# Builders.


def lenet300_100(
    num_classes=10,
    input_shape=(28, 28, 1),
    width_multiplier=1.0,
    masked=True,
    weight_decay=0.0,
    widths=None,
):
    """LeNet-300-100: flatten, dense 300 and 100 with ReLU, dense logits.

    Args:
        num_classes: Number of output logits (positive int).
        input_shape: `(height, width, channels)` of one image.
        width_multiplier: Scales the hidden widths 300 and 100.
        masked: `MaskedDense` layers if True, plain `Dense` otherwise.
        weight_decay: Coefficient `wd >= 0`, as `L2(wd / 2)` on the kernels
            (see the module docstring).
        widths: Explicit `(h1, h2)`, overriding `width_multiplier`.

    Returns:
        A `keras.Model` named `lenet300_100` with layers `fc1`, `fc2`, `fc3`
        that outputs logits.

    Raises:
        ValueError: For a bad argument.

    Example:

    >>> lenet300_100(masked=False).count_params()
    266610
    """
    _check_positive_int("num_classes", num_classes)
    input_shape = _check_input_shape(input_shape)
    h1, h2 = _resolve_widths(
        "lenet300_100", widths, width_multiplier, _lenet300_100_base()
    )
    kw = _kernel_kwargs(weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = _dense(masked, h1, activation="relu", name="fc1", **kw)(x)
    x = _dense(masked, h2, activation="relu", name="fc2", **kw)(x)
    outputs = _dense(masked, num_classes, name="fc3", **kw)(x)
    return keras.Model(inputs, outputs, name="lenet300_100")


def lenet5(
    num_classes=10,
    input_shape=(28, 28, 1),
    width_multiplier=1.0,
    masked=True,
    weight_decay=0.0,
    widths=None,
):
    """LeNet-5, Caffe variant: conv 20 and 50 (5x5), fc 500, logits.

    Each 5x5 "valid" convolution (ReLU) is followed by 2x2 max pooling; then
    flatten, a 500-unit ReLU layer and the logits.

    Args:
        num_classes: Number of output logits (positive int).
        input_shape: `(height, width, channels)`, at least 16x16.
        width_multiplier: Scales the widths 20, 50 and 500.
        masked: Masked layers if True, plain `Conv2D`/`Dense` otherwise.
        weight_decay: Coefficient `wd >= 0`, as `L2(wd / 2)` on the kernels.
        widths: Explicit `(conv1_filters, conv2_filters, fc1_units)`.

    Returns:
        A `keras.Model` named `lenet5` with layers `conv1`, `conv2`, `fc1`,
        `fc2` that outputs logits.

    Raises:
        ValueError: For a bad argument.

    Example:

    >>> lenet5(masked=False).count_params()
    431080
    """
    _check_positive_int("num_classes", num_classes)
    input_shape = _check_input_shape(input_shape, min_size=16)
    c1, c2, f1 = _resolve_widths("lenet5", widths, width_multiplier, _lenet5_base())
    kw = _kernel_kwargs(weight_decay)
    inputs = keras.Input(input_shape, name="image")
    x = _conv(masked, c1, 5, activation="relu", name="conv1", **kw)(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _conv(masked, c2, 5, activation="relu", name="conv2", **kw)(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _dense(masked, f1, activation="relu", name="fc1", **kw)(x)
    outputs = _dense(masked, num_classes, name="fc2", **kw)(x)
    return keras.Model(inputs, outputs, name="lenet5")


def _bn_relu(x, name):
    x = keras.layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def wrn(
    depth=22,
    width=2,
    num_classes=10,
    input_shape=(32, 32, 3),
    width_multiplier=1.0,
    masked=True,
    weight_decay=0.0,
    widths=None,
):
    """Pre-activation Wide ResNet WRN-`depth`-`width` for CIFAR-size images.

    A 3x3 stem convolution with 16 filters, three groups of
    `n = (depth - 4) / 6` basic blocks with `16 * width`, `32 * width` and
    `64 * width` filters (strides 1, 2, 2), then batch norm, ReLU, global
    average pooling and the logits. A block is `BN-ReLU-conv3x3-BN-ReLU-
    conv3x3` plus a shortcut, a 1x1 convolution of the pre-activated input
    when the shape changes and the identity otherwise. Convolutions have no
    bias (batch norm follows) and He-normal initialization; no dropout.

    Args:
        depth: `6 * n + 4` with `n >= 1` (10, 16, 22, 28, ...).
        width: The widening factor k (positive int).
        num_classes: Number of output logits (positive int).
        input_shape: `(height, width, channels)`, at least 4x4.
        width_multiplier: Scales every width, the stem's included.
        masked: Masked layers if True, plain `Conv2D`/`Dense` otherwise.
        weight_decay: Coefficient `wd >= 0`, as `L2(wd / 2)` on the kernels.
        widths: Explicit `(stem, group1, group2, group3)` filter counts.

    Returns:
        A `keras.Model` named `wrn_{depth}_{width}` that outputs logits.

    Raises:
        ValueError: For a bad argument.

    Example:

    >>> model = wrn(depth=10, width=1)
    >>> tuple(model.get_layer("logits").kernel.shape)
    (64, 10)
    """
    _check_wrn_depth(depth)
    _check_positive_int("width", width)
    _check_positive_int("num_classes", num_classes)
    input_shape = _check_input_shape(input_shape, min_size=4)
    widths = _resolve_widths("wrn", widths, width_multiplier, _wrn_base(depth, width))
    kw = dict(_kernel_kwargs(weight_decay), use_bias=False, kernel_initializer="he_normal")
    inputs = keras.Input(input_shape, name="image")
    x = _conv(masked, widths[0], 3, padding="same", name="conv1", **kw)(inputs)
    for name, c_in, c_out, stride in _wrn_blocks(depth, widths):
        pre = _bn_relu(x, f"{name}_pre")
        if c_in != c_out or stride != 1:
            shortcut = _conv(
                masked, c_out, 1, strides=stride, name=f"{name}_shortcut", **kw
            )(pre)
        else:
            shortcut = x
        y = _conv(
            masked, c_out, 3, strides=stride, padding="same",
            name=f"{name}_conv_a", **kw,
        )(pre)
        y = _bn_relu(y, f"{name}_mid")
        y = _conv(masked, c_out, 3, padding="same", name=f"{name}_conv_b", **kw)(y)
        x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    x = _bn_relu(x, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _dense(
        masked, num_classes, name="logits", **_kernel_kwargs(weight_decay)
    )(x)
    return keras.Model(inputs, outputs, name=f"wrn_{depth}_{width}")


# ----------------------------------------------------------------------
# Kernel counting and the small-dense baseline.


def kernel_shapes(model):
    """`{variable path: shape}` of the weights `rigl_keras.sparsify` masks.

    The weights of `rigl_keras.masking.kernel_weights`, in its order
    (nested layers included): the masked weights, and in layers without
    masks the kernels of `Dense`, `EinsumDense`, `Conv*`, depthwise and
    separable convolutions, the embeddings of `Embedding`, the kernels of
    recurrent cells. For the paper's models: every `MaskedDense` /
    `MaskedConv2D` (or `Dense` / `Conv2D`) kernel. The keys are those of
    the callbacks' `distribution` dicts and logs.

    Args:
        model: A built Keras model.

    Returns:
        An ordered dict of shape tuples.

    Example:

    >>> kernel_shapes(lenet300_100())
    {'fc1/kernel': (784, 300), 'fc2/kernel': (300, 100), 'fc3/kernel': (100, 10)}
    """
    return {
        weight.key: tuple(int(d) for d in weight.variable.shape)
        for weight in masking.kernel_weights(model)
    }


def kernel_param_count(model):
    """Number of entries of the `kernel_shapes` weights (no bias, no mask).

    Example:

    >>> kernel_param_count(lenet300_100())
    266200
    """
    return sum(math.prod(shape) for shape in kernel_shapes(model).values())


SmallDenseSolution = collections.namedtuple(
    "SmallDenseSolution",
    ["widths", "width_multiplier", "kernel_params", "target_params"],
)
SmallDenseSolution.__doc__ = """The widths of a small-dense model.

Attributes:
    widths: Tuple of ints, to pass as a builder's `widths`.
    width_multiplier: The uniform multiplier found by bisection (before the
        per-slot +-1 refinement).
    kernel_params: Kernel weights of the model with `widths`.
    target_params: `(1 - sparsity) * ` the full model's kernel weights.
"""


def small_dense_widths(
    architecture,
    sparsity,
    num_classes=10,
    input_shape=(28, 28, 1),
    **arch_kwargs,
):
    """Widths of a dense model with as many kernel weights as a sparse one.

    The "Small-Dense" baseline of the RigL paper: a dense network whose
    layer widths are scaled by one factor so that its parameter count
    matches the number of non-zeros of the sparse network,
    `target = (1 - sparsity) * K` where `K` is the full-size model's number
    of kernel weights (biases and batch-norm parameters are not counted;
    they are the same order in both models). For ER and ERK this is exactly
    the number of non-zero kernel weights of the sparse model.

    The width multiplier `m` is found by bisection on `[0, 1]` (the kernel
    count of `max(1, round(base * m))` widths is non-decreasing in `m`);
    the closer of the two integer width vectors around the target is kept.
    Widths are integers, so the count moves in steps of one unit of the
    widest layer; to shrink that error each width may then move by +-1
    (greedily, the move that brings the count closest to the target first).
    At high sparsity on small models (LeNet-300-100 above ~90%) the result
    can still differ from the target by a few percent: compare the returned
    `kernel_params` with `target_params`.

    Args:
        architecture: One of `ARCHITECTURES`.
        sparsity: The sparse model's overall sparsity, in `[0, 1)`.
        num_classes: Number of classes of the model.
        input_shape: `(height, width, channels)` of one image.
        **arch_kwargs: `depth` and `width` for `"wrn"`.

    Returns:
        A `SmallDenseSolution`.

    Raises:
        ValueError: For an unknown architecture or a sparsity outside
            `[0, 1)`.

    Example:

    >>> solution = small_dense_widths("lenet300_100", 0.9)
    >>> solution.widths, solution.kernel_params, round(solution.target_params)
    ((33, 12), 26388, 26620)
    """
    arch = _architecture(architecture)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
        0.0 <= sparsity < 1.0
    ):
        raise ValueError(
            f"`sparsity` must be a number in [0, 1). Received: sparsity={sparsity!r}"
        )
    input_shape = tuple(input_shape)
    base = arch.base(**arch_kwargs)

    def count(widths):
        shapes = arch.shapes(widths, input_shape, num_classes, **arch_kwargs)
        return sum(math.prod(shape) for shape in shapes.values())

    def widths_at(multiplier):
        return tuple(_scale(b, multiplier) for b in base)

    target = (1.0 - sparsity) * count(base)
    lo, hi = 0.0, 1.0
    if sparsity == 0.0:
        lo = hi
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if count(widths_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    candidates = [(abs(count(widths_at(m)) - target), m) for m in (lo, hi)]
    _, multiplier = min(candidates)
    widths = widths_at(multiplier)

    # Greedy +-1 refinement, each slot moved at most once.
    error = abs(count(widths) - target)
    moved = set()
    while True:
        best = None
        for slot in range(len(widths)):
            if slot in moved:
                continue
            for delta in (-1, 1):
                trial = list(widths)
                trial[slot] += delta
                if trial[slot] < 1:
                    continue
                trial_error = abs(count(tuple(trial)) - target)
                if trial_error < error and (best is None or trial_error < best[0]):
                    best = (trial_error, slot, tuple(trial))
        if best is None:
            break
        error, slot, widths = best
        moved.add(slot)
    return SmallDenseSolution(widths, multiplier, count(widths), target)


_BUILDERS = {"lenet300_100": lenet300_100, "lenet5": lenet5, "wrn": wrn}


def build(architecture, **kwargs):
    """Builds `architecture` (one of `ARCHITECTURES`) with builder kwargs.

    Example:

    >>> build("lenet5", masked=False).name
    'lenet5'
    """
    _architecture(architecture)
    return _BUILDERS[architecture](**kwargs)
