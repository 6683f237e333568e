"""The benchmark scripts of rigl_keras, run as `python -m benchmarks.NAME`.

Run them from the repository root: `overhead`, `export`, `accuracy`,
`accuracy_tfmot` and `scaling` (see docs/benchmarks.md). Importing this
package imports nothing: `accuracy_tfmot` must set `TF_USE_LEGACY_KERAS=1`
before TensorFlow or Keras loads.
"""
