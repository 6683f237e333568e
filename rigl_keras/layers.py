"""Masked Keras layers: `MaskedDense` and `MaskedConv2D`.

A masked layer owns three kinds of state: a trainable `kernel`, an optional
trainable `bias` and a non-trainable `mask` of the kernel's shape that holds
exactly 0.0 or 1.0. Its output is always that of the masked kernel `W * M`.

How the mask is applied (the design, measured in `benchmarks/overhead.py`):

* Entries of the kernel outside the mask are kept at exactly 0.0 in the
  kernel variable itself. Whenever weights can change from outside (mask
  updates, `layer.set_weights`, loading, the start of training with a
  `rigl_keras` callback) the layer re-zeroes them with `apply_mask()`.
* In training (`training=True`) the forward pass therefore uses the kernel
  as it is, with no multiply; the backward pass multiplies the incoming
  gradient by the mask, so the optimizer sees exactly
  `dL/dW = dL/d(W * M) * M` and nothing moves an inactive weight off zero.
* While a `rigl_keras` callback trains the model, the gradient hook on its
  optimizer (`rigl_keras.gradients`) masks the gradient instead, as it does
  for every weight `rigl_keras.sparsify` masks, and records the dense
  gradient `dL/d(W * M)` on the steps a RigL update needs it.
* Outside training (`predict`, `evaluate`, export) the layer multiplies by
  the mask, so its output is `W * M` even if someone wrote non-zeros into
  inactive entries by hand.
"""

import keras
import numpy as np
import tensorflow as tf

from rigl_keras import masking

__all__ = [
    "MaskedLayer",
    "MaskedDense",
    "MaskedConv2D",
    "masked_layers",
]


def _zero_kept_kernel(kernel, mask):
    """Identity forward, masked backward.

    Valid only while inactive kernel entries hold exactly zero, which the
    masked layers maintain: then `kernel == kernel * mask` and the multiply
    of the forward pass can be skipped.
    """

    @tf.custom_gradient
    def forward(k):
        def backward(dy):
            return dy * mask

        return tf.identity(k), backward

    return forward(kernel)


class MaskedLayer(keras.layers.Layer):
    """Base class of layers whose kernel is multiplied by a binary mask.

    Subclasses create `self.kernel` in `build` and then call
    `self._build_mask()`; in `call` they use `self._effective_kernel(training)`
    in place of the kernel.

    Attributes:
        kernel: The raw trainable kernel. Entries outside the mask are 0.0.
        mask: Non-trainable variable of the kernel's shape, exactly 0.0/1.0.
    """

    def _build_mask(self):
        self.mask = self.add_weight(
            name="mask",
            shape=tuple(self.kernel.shape),
            initializer="ones",
            trainable=False,
            autocast=False,
        )
        masking.register_mask(self, self.kernel, self.mask)

    def get_sparsifiable_weights(self):
        """`[kernel]`: the weight this layer masks (`rigl_keras.SparsifiableLayer`)."""
        return [self.kernel] if self.built else []

    def _effective_kernel(self, training):
        kernel = tf.convert_to_tensor(self.kernel)
        mask = tf.cast(masking.variable_value(self.mask), kernel.dtype)
        if training and self.__dict__.get("_rigl_gradient_masked_by_optimizer"):
            # A mask callback's optimizer hook masks (and records) the
            # gradient: the kernel is used as it is.
            return kernel
        if training:
            return _zero_kept_kernel(kernel, mask)
        return kernel * mask

    def apply_mask(self):
        """Sets kernel entries outside the mask to exactly 0.0."""
        self.kernel.assign(self.kernel * tf.cast(masking.variable_value(self.mask), self.kernel.dtype))

    def set_weights(self, weights):
        """Sets the weights, then re-zeroes kernel entries outside the mask."""
        super().set_weights(weights)
        self.apply_mask()

    def load_own_variables(self, store):
        """Loads kernel, bias and mask, then re-zeroes inactive entries."""
        super().load_own_variables(store)
        self.apply_mask()

    @property
    def sparsity(self):
        """Fraction of mask entries that are 0.0, as a Python float."""
        mask = np.asarray(self.mask)
        return float(1.0 - mask.mean()) if mask.size else 0.0


def _check_lora(layer_name, lora_rank, quantization_config=None):
    if lora_rank is not None:
        raise ValueError(
            f"{layer_name} does not support LoRA: a low-rank update is dense "
            "and would fill the masked kernel. Use lora_rank=None. "
            f"Received: lora_rank={lora_rank}"
        )
    if quantization_config is not None:
        raise ValueError(
            f"{layer_name} does not support quantization. Strip the masks "
            "with `rigl_keras.strip_masks` and quantize the plain model. "
            f"Received: quantization_config={quantization_config!r}"
        )


def _base_config(layer):
    """Config entries shared by `MaskedDense` and `MaskedConv2D`."""
    ser = keras.saving.serialize_keras_object
    return {
        "activation": keras.activations.serialize(layer.activation),
        "use_bias": layer.use_bias,
        "kernel_initializer": keras.initializers.serialize(layer.kernel_initializer),
        "bias_initializer": keras.initializers.serialize(layer.bias_initializer),
        "kernel_regularizer": ser(layer.kernel_regularizer),
        "bias_regularizer": ser(layer.bias_regularizer),
        "kernel_constraint": ser(layer.kernel_constraint),
        "bias_constraint": ser(layer.bias_constraint),
    }


def _init_common(layer, activation, use_bias, kernel_initializer,
                 bias_initializer, kernel_regularizer, bias_regularizer,
                 kernel_constraint, bias_constraint):
    layer.activation = keras.activations.get(activation)
    layer.use_bias = bool(use_bias)
    layer.kernel_initializer = keras.initializers.get(kernel_initializer)
    layer.bias_initializer = keras.initializers.get(bias_initializer)
    layer.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    layer.bias_regularizer = keras.regularizers.get(bias_regularizer)
    layer.kernel_constraint = keras.constraints.get(kernel_constraint)
    layer.bias_constraint = keras.constraints.get(bias_constraint)


def _add_kernel_and_bias(layer, kernel_shape, bias_units):
    layer.kernel = layer.add_weight(
        name="kernel",
        shape=kernel_shape,
        initializer=layer.kernel_initializer,
        regularizer=layer.kernel_regularizer,
        constraint=layer.kernel_constraint,
    )
    if layer.use_bias:
        layer.bias = layer.add_weight(
            name="bias",
            shape=(bias_units,),
            initializer=layer.bias_initializer,
            regularizer=layer.bias_regularizer,
            constraint=layer.bias_constraint,
        )
    else:
        layer.bias = None
    layer._build_mask()


@keras.saving.register_keras_serializable(package="rigl_keras")
class MaskedDense(MaskedLayer):
    """A densely-connected layer whose kernel is masked: `act(x @ (W * M) + b)`.

    Accepts every argument of `keras.layers.Dense`. A fresh layer's mask is
    all ones; a `rigl_keras` callback sparsifies and rewires it.

    Args:
        units: Positive integer, dimensionality of the output space.
        activation: Activation function (name or callable). Default: linear.
        use_bias: Whether the layer uses a bias vector.
        kernel_initializer: Initializer for the kernel.
        bias_initializer: Initializer for the bias.
        kernel_regularizer: Regularizer for the kernel.
        bias_regularizer: Regularizer for the bias.
        activity_regularizer: Regularizer for the output.
        kernel_constraint: Constraint applied to the kernel after updates.
        bias_constraint: Constraint applied to the bias after updates.
        lora_rank: Must be `None` (LoRA would densify the kernel).
        lora_alpha: Ignored unless `lora_rank` is set.
        quantization_config: Must be `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Raises:
        ValueError: If `units` is not a positive integer, or `lora_rank` or
            `quantization_config` is set.

    Example:

    >>> layer = MaskedDense(4, activation="relu")
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> tuple(y.shape), tuple(layer.mask.shape), float(layer.sparsity)
    ((2, 4), (3, 4), 0.0)
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        lora_rank=None,
        lora_alpha=None,
        quantization_config=None,
        **kwargs,
    ):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(
                "`units` must be a positive integer. "
                f"Received: units={units!r}"
            )
        _check_lora("MaskedDense", lora_rank, quantization_config)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = int(units)
        _init_common(self, activation, use_bias, kernel_initializer,
                     bias_initializer, kernel_regularizer, bias_regularizer,
                     kernel_constraint, bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of the input to MaskedDense must be "
                f"defined. Received: input_shape={input_shape}"
            )
        _add_kernel_and_bias(self, (input_dim, self.units), self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs, training=None):
        x = keras.ops.matmul(inputs, self._effective_kernel(training))
        if self.bias is not None:
            x = keras.ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        base_config = super().get_config()
        config = {"units": self.units, **_base_config(self)}
        return {**base_config, **config}


def _normalize_tuple(value, n, name, allow_zero=False):
    """An int or a length-`n` sequence of ints, as a tuple (Keras style)."""
    values = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    low = 0 if allow_zero else 1
    if len(values) != n or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low
        for v in values
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {low} or a tuple of {n} such "
            f"integers. Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


@keras.saving.register_keras_serializable(package="rigl_keras")
class MaskedConv2D(MaskedLayer):
    """A 2-D convolution whose kernel is masked: `act(conv(x, W * M) + b)`.

    Accepts every argument of `keras.layers.Conv2D`. The kernel has shape
    `kernel_size + (in_channels // groups, filters)`.

    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: An int or a tuple of 2 ints.
        strides: An int or a tuple of 2 ints, default 1.
        padding: `"valid"` or `"same"` (case-insensitive).
        data_format: `"channels_last"`, `"channels_first"` or `None` (the
            Keras default from `keras.config.image_data_format()`).
        dilation_rate: An int or a tuple of 2 ints, default 1.
        groups: A positive integer dividing `filters` (and the input channels).
        activation: Activation function. Default: linear.
        use_bias: Whether the layer uses a bias vector.
        kernel_initializer: Initializer for the kernel.
        bias_initializer: Initializer for the bias.
        kernel_regularizer: Regularizer for the kernel.
        bias_regularizer: Regularizer for the bias.
        activity_regularizer: Regularizer for the output.
        kernel_constraint: Constraint applied to the kernel after updates.
        bias_constraint: Constraint applied to the bias after updates.
        lora_rank: Must be `None`.
        lora_alpha: Ignored unless `lora_rank` is set.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Raises:
        ValueError: For a bad `filters`, `kernel_size`, `strides`, `padding`,
            `data_format`, `dilation_rate` or `groups`, for strides > 1
            combined with dilation > 1, or for a set `lora_rank`.

    Example:

    >>> layer = MaskedConv2D(8, 3, padding="same")
    >>> y = layer(np.ones((1, 5, 5, 2), "float32"))
    >>> tuple(y.shape), tuple(layer.kernel.shape)
    ((1, 5, 5, 8), (3, 3, 2, 8))
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        lora_rank=None,
        lora_alpha=None,
        **kwargs,
    ):
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(
                "`filters` must be a positive integer. "
                f"Received: filters={filters!r}"
            )
        kernel_size = _normalize_tuple(kernel_size, 2, "kernel_size")
        strides = _normalize_tuple(strides, 2, "strides")
        dilation_rate = _normalize_tuple(dilation_rate, 2, "dilation_rate")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(
                '`padding` must be "valid" or "same". '
                f"Received: padding={padding!r}"
            )
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                '`data_format` must be "channels_last" or "channels_first". '
                f"Received: data_format={data_format!r}"
            )
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 or filters % groups:
            raise ValueError(
                "`groups` must be a positive integer that divides `filters` "
                f"({filters}). Received: groups={groups!r}"
            )
        if max(strides) > 1 and max(dilation_rate) > 1:
            raise ValueError(
                "`strides` > 1 is not compatible with `dilation_rate` > 1. "
                f"Received: strides={strides}, dilation_rate={dilation_rate}"
            )
        _check_lora("MaskedConv2D", lora_rank)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.rank = 2
        self.filters = int(filters)
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.data_format = data_format
        self.dilation_rate = dilation_rate
        self.groups = int(groups)
        _init_common(self, activation, use_bias, kernel_initializer,
                     bias_initializer, kernel_regularizer, bias_regularizer,
                     kernel_constraint, bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        channels = input_shape[self._channel_axis()]
        if channels is None or channels % self.groups:
            raise ValueError(
                "The number of input channels must be defined and divisible "
                f"by groups={self.groups}. Received: input_shape={input_shape}"
            )
        kernel_shape = self.kernel_size + (channels // self.groups, self.filters)
        _add_kernel_and_bias(self, kernel_shape, self.filters)
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={self._channel_axis(): channels}
        )

    def call(self, inputs, training=None):
        channels_first = self.data_format == "channels_first"
        if channels_first:
            # TensorFlow's CPU convolution takes channels_last only.
            inputs = keras.ops.transpose(inputs, (0, 2, 3, 1))
        x = keras.ops.conv(
            inputs,
            self._effective_kernel(training),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format="channels_last",
        )
        if self.bias is not None:
            x = keras.ops.add(x, keras.ops.reshape(self.bias, (1, 1, 1, self.filters)))
        if self.activation is not None:
            x = self.activation(x)
        if channels_first:
            x = keras.ops.transpose(x, (0, 3, 1, 2))
        return x

    def compute_output_shape(self, input_shape):
        spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        out = list(input_shape)
        for i, axis in enumerate(spatial_axes):
            size = input_shape[axis]
            if size is None:
                continue
            extent = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1
            if self.padding == "same":
                out[axis] = -(-size // self.strides[i])
            else:
                out[axis] = max(0, (size - extent) // self.strides[i] + 1)
        out[self._channel_axis()] = self.filters
        return tuple(out)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            **_base_config(self),
        }
        return {**base_config, **config}


def masked_layers(model):
    """Lists the masked layers of a model or layer, each once, in order.

    Nested models and layers are searched recursively; a layer shared by
    several call sites appears once.

    Args:
        model: A `keras.Model` or `keras.layers.Layer`.

    Returns:
        A list of `MaskedLayer` instances.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), MaskedDense(2),
    ...                           keras.layers.Dense(1)])
    >>> [type(l).__name__ for l in masked_layers(model)]
    ['MaskedDense']
    """
    found = []
    seen = set()
    # Depth-first, in each layer's own order. (Keras' `_flatten_layers`
    # visits the sublayers of a nested model in reverse order.)
    stack = [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, MaskedLayer):
            found.append(layer)
        stack.extend(reversed(getattr(layer, "_layers", None) or []))
    return found
