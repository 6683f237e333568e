"""The matrix view of a weight: inputs x outputs.

Structured masks (`rigl_keras.structures`) are defined on a weight's
*matrix view*: a 2-D matrix with one row per input (fan-in) entry and one
column per output (fan-out) entry, as the layer's matrix multiply sees it.
The view is a transpose (only where needed) followed by a plain row-major
reshape of the variable, so a mask of the variable's shape and its matrix
view convert into each other exactly (`MatrixView.to_matrix` and
`MatrixView.from_matrix`). Its shape is `matrix_shape(w.fan_shape)`, that
is `(prod(fan_shape[:-1]), fan_shape[-1])`, for every weight `w` that
`rigl_keras.masking.MaskedWeight` describes:

| weight | variable shape | matrix view | transpose |
| --- | --- | --- | --- |
| `Dense`, `Embedding`, RNN kernels | `(n_in, n_out)` | the same | no |
| `Conv*D` kernel | `(*k, c_in, c_out)` | `(prod(k) * c_in, c_out)`, rows in `(*k, c_in)` order (`c_in` fastest) | no |
| `Conv*DTranspose` kernel | `(*k, c_out, c_in)` | `(prod(k) * c_in, c_out)` | the last two axes |
| depthwise kernel | `(*k, c_in, multiplier)` | `(prod(k), c_in * multiplier)`: each output channel sees `prod(k)` inputs | no |
| `EinsumDense` kernel | e.g. `(d, heads, head_dim)` for `"abc,cde->abde"` | `(fan_in, fan_out)`: the kernel axes that occur in the input (in kernel order), then the others (`(d, heads * head_dim)`) | where an input axis follows an output axis, e.g. `"ab,cb->ac"` (kernel `(c, b)`, view `(b, c)`) |
| other weights | any | `(prod(shape[:-1]), shape[-1])` (`(1, n)` for a vector) | no |

So an `EinsumDense` kernel is *not* seen by `reshape(-1, shape[-1])`: the
query projection of `MultiHeadAttention`, `(d, heads, head_dim)`, is a
`(d, heads * head_dim)` matrix; its output projection `(heads, head_dim,
d)` is `(heads * head_dim, d)`.

Example:

>>> view = MatrixView((3, 3, 8, 16))
>>> view.matrix_shape
(72, 16)
>>> MatrixView((3, 3, 16, 8), input_axes=(0, 1, 3)).matrix_shape
(72, 16)
"""

import math

import keras

__all__ = ["MatrixView", "matrix_shape", "matrix_view"]

_TRANSPOSE_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _shape_tuple(shape, argument):
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = None
    if dims is None or any(d < 1 for d in dims):
        raise ValueError(
            f"`{argument}` must be a tuple of positive integers. "
            f"Received: {argument}={shape!r}"
        )
    return dims


class MatrixView:
    """How a variable of `shape` is seen as an inputs x outputs matrix.

    The rows are the entries of `input_axes` (row-major in the order
    given), the columns those of the other axes (in increasing order).

    Args:
        shape: The variable's shape, a tuple of positive integers.
        input_axes: The axes that form the rows. Defaults to all but the
            last axis, the view of a `Dense` or `Conv*D` kernel.

    Raises:
        ValueError: If `shape` is not a tuple of positive integers, or
            `input_axes` are not distinct axes of `shape`.

    Example:

    >>> view = MatrixView((2, 3), input_axes=(1,))
    >>> view.matrix_shape, view.permutation
    ((3, 2), (1, 0))
    """

    def __init__(self, shape, input_axes=None):
        self.shape = _shape_tuple(shape, "shape")
        ndim = len(self.shape)
        if input_axes is None:
            input_axes = tuple(range(max(ndim - 1, 0)))
        try:
            axes = tuple(int(a) for a in input_axes)
        except (TypeError, ValueError):
            axes = None
        if axes is None or len(set(axes)) != len(axes) or any(
            not 0 <= a < ndim for a in axes
        ):
            raise ValueError(
                f"`input_axes` must be distinct axes of a shape of rank {ndim}. "
                f"Received: input_axes={input_axes!r}"
            )
        self.input_axes = axes
        self.output_axes = tuple(a for a in range(ndim) if a not in axes)

    @property
    def permutation(self):
        """The transpose applied before the reshape (input axes first)."""
        return self.input_axes + self.output_axes

    @property
    def plain(self):
        """Whether the view is a plain reshape (no transpose)."""
        return self.permutation == tuple(range(len(self.shape)))

    @property
    def matrix_shape(self):
        """`(rows, cols)`: number of inputs and of outputs."""
        rows = math.prod(self.shape[a] for a in self.input_axes)
        cols = math.prod(self.shape[a] for a in self.output_axes)
        return (rows, cols)

    def to_matrix(self, x):
        """The matrix view of a tensor of `shape`."""
        if not self.plain:
            x = keras.ops.transpose(x, self.permutation)
        return keras.ops.reshape(x, self.matrix_shape)

    def from_matrix(self, x):
        """The tensor of `shape` whose matrix view is `x`."""
        if self.plain:
            return keras.ops.reshape(x, self.shape)
        x = keras.ops.reshape(x, tuple(self.shape[a] for a in self.permutation))
        inverse = [0] * len(self.shape)
        for position, axis in enumerate(self.permutation):
            inverse[axis] = position
        return keras.ops.transpose(x, inverse)

    def __eq__(self, other):
        return (
            isinstance(other, MatrixView)
            and self.shape == other.shape
            and self.input_axes == other.input_axes
        )

    def __hash__(self):
        return hash((self.shape, self.input_axes))

    def __repr__(self):
        return f"MatrixView({self.shape}, input_axes={self.input_axes})"


def _einsum_input_axes(layer, shape):
    """The kernel axes of an `EinsumDense` that occur in its input, or None."""
    inputs, rest = layer.equation.split(",")
    kernel_axes = rest.split("->")[0]
    if len(kernel_axes) != len(shape):
        return None
    return tuple(i for i, axis in enumerate(kernel_axes) if axis in inputs)


def matrix_view(weight_or_shape):
    """The `MatrixView` of a masked weight, or the default one of a shape.

    Args:
        weight_or_shape: A `rigl_keras.masking.MaskedWeight` (its layer
            decides the view: module docstring), or a shape (the default
            view, all but the last axis as inputs).

    Returns:
        A `MatrixView` whose `matrix_shape` is `matrix_shape(w.fan_shape)`.

    Raises:
        ValueError: If a weight's fan view is not a transpose and reshape
            of its variable that this module knows.

    Example:

    >>> layer = keras.layers.EinsumDense("ab,cb->ac", output_shape=4)
    >>> layer.build((None, 3))
    >>> _ = rigl_keras.sparsify(layer)
    >>> weight = rigl_keras.masked_weights(layer)[0]
    >>> weight.shape, matrix_view(weight).matrix_shape
    ((4, 3), (3, 4))
    """
    if not hasattr(weight_or_shape, "variable"):
        return MatrixView(weight_or_shape)
    weight = weight_or_shape
    shape, layer = weight.shape, weight.layer
    input_axes = None
    ndim = len(shape)
    if isinstance(layer, keras.layers.EinsumDense):
        input_axes = _einsum_input_axes(layer, shape)
    elif ndim >= 3 and isinstance(layer, _TRANSPOSE_CONVS):
        input_axes = tuple(range(ndim - 2)) + (ndim - 1,)
    elif ndim >= 3 and (
        weight.variable.name == "depthwise_kernel"
        or isinstance(layer, _DEPTHWISE_CONVS)
    ):
        input_axes = tuple(range(ndim - 2))
    view = MatrixView(shape, input_axes)
    if view.matrix_shape != matrix_shape(weight.fan_shape):
        raise ValueError(
            f"Weight {weight.key!r} of shape {shape} has the fan view "
            f"{weight.fan_shape}, which is not a transpose and reshape of the "
            "variable known to rigl_keras.matrix_views: it has no matrix view "
            "for structured masks."
        )
    return view


def matrix_shape(weight_or_fan_shape):
    """`(prod(fan_shape[:-1]), fan_shape[-1])`: the matrix view's shape.

    Args:
        weight_or_fan_shape: A `rigl_keras.masking.MaskedWeight` (its
            `fan_shape` is used) or a fan shape.

    Returns:
        `(rows, cols)`, Python ints.

    Example:

    >>> matrix_shape((3, 3, 8, 16))
    (72, 16)
    """
    fan_shape = getattr(weight_or_fan_shape, "fan_shape", weight_or_fan_shape)
    return MatrixView(fan_shape).matrix_shape
