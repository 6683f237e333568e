"""Helper of `tests/test_callbacks.py`: RigL under a 2-replica MirroredStrategy.

Run as a script in a fresh process (logical CPU devices must be configured
before TensorFlow initializes):

    python tests/_mirrored_script.py

It splits the CPU into two logical devices, trains small masked MLPs with
`RigLCallback` under `MirroredStrategy(["/cpu:0", "/cpu:1"])` (RigL with SGD
momentum, and SNFS with Adam), trains the RigL one again without a strategy,
and prints one line `RESULT {json}` describing, per run and layer, the
per-replica masks and kernels. The test parses that line and asserts.
"""

import json
import sys
import warnings

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
)

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras  # noqa: E402
import numpy as np  # noqa: E402

import rigl_keras  # noqa: E402

import _helpers  # noqa: E402  (tests/_helpers.py, this script's directory)


class _GradientSpy(_helpers.SpiedRigL):
    """Keeps the recorded dense gradients (read in cross-replica context,
    i.e. aggregated over replicas) of the first update."""

    def before_update(self, step):
        if not hasattr(self, "first_gradients"):
            self.first_gradients = {
                key.split("/")[-2]: gradient.read_value().numpy()
                for key, gradient in self.dense_gradients.items()
            }


class _InitialMasks(keras.callbacks.Callback):
    """Placed after RigLCallback: keeps the masks RigL set at train begin."""

    def on_train_begin(self, logs=None):
        self.masks = {
            layer.name: np.asarray(layer.mask).copy()
            for layer in rigl_keras.masked_layers(self.model)
        }


def _local(strategy, variable):
    """Per-replica NumPy copies of a Keras variable."""
    return [
        np.asarray(v) for v in strategy.experimental_local_results(variable.value)
    ]


def _train(strategy, grow, make_optimizer):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 16)).astype("float32")
    y = rng.standard_normal((256, 4)).astype("float32")
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((16,)),
            rigl_keras.MaskedDense(32, activation="relu", name="fc1"),
            rigl_keras.MaskedDense(4, name="out"),
        ])
        model.compile(make_optimizer(), "mse")
    rigl = _GradientSpy(
        sparsity=0.8,
        update_freq=2,
        drop_fraction=0.3,
        drop_fraction_schedule="constant",
        end_step=14,
        grow=grow,
        seed=1,
    )
    initial = _InitialMasks()
    # 256 / 32 = 8 steps per epoch, 16 steps: updates at 2, 4, ..., 14.
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
              callbacks=[rigl, initial])
    return model, rigl, initial


def _describe(strategy, model, rigl, initial, reference=None, reference_rigl=None):
    result = {"targets": rigl.target_sparsities, "layers": {}}
    for layer in rigl_keras.masked_layers(model):
        masks = _local(strategy, layer.mask)
        kernels = _local(strategy, layer.kernel)
        info = {
            "n_local": len(masks),
            "devices": [
                v.device
                for v in strategy.experimental_local_results(layer.mask.value)
            ],
            "masks_equal": all(np.array_equal(masks[0], m) for m in masks),
            "kernels_equal": all(np.array_equal(kernels[0], k) for k in kernels),
            "mask_values": sorted(float(v) for v in np.unique(masks[0])),
            "zeros": [int(np.sum(m == 0)) for m in masks],
            "changed": int(np.sum(masks[0] != initial.masks[layer.name])),
            "inactive_max_abs": max(
                float(np.max(np.abs(k[m == 0]), initial=0.0))
                for k, m in zip(kernels, masks)
            ),
        }
        if reference is not None:
            ref = {l.name: l for l in rigl_keras.masked_layers(reference)}[layer.name]
            info["same_mask_as_single"] = bool(
                np.array_equal(masks[0], np.asarray(ref.mask))
            )
            info["kernel_diff_single"] = float(
                np.max(np.abs(kernels[0] - np.asarray(ref.kernel)))
            )
            recorded = rigl.first_gradients[layer.name]
            single_recorded = reference_rigl.first_gradients[layer.name]
            info["recorded_rel_diff_single"] = float(
                np.max(np.abs(recorded - single_recorded))
                / np.max(np.abs(single_recorded))
            )
        result["layers"][layer.name] = info
    return result


def main():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        def sgd():
            return keras.optimizers.SGD(0.05, momentum=0.9)

        rigl_run = _train(mirrored, "gradient", sgd)
        single, single_rigl, _ = _train(tf.distribute.get_strategy(), "gradient", sgd)
        snfs_run = _train(
            mirrored, "momentum", lambda: keras.optimizers.Adam(0.01)
        )
    result = {
        "replicas": mirrored.num_replicas_in_sync,
        "rigl": _describe(mirrored, *rigl_run, reference=single,
                          reference_rigl=single_rigl),
        "snfs": _describe(mirrored, *snfs_run),
        "warnings": [
            str(w.message)
            for w in caught
            if "mask update" in str(w.message) or "dense gradient" in str(w.message)
        ],
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
