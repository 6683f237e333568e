"""The RigL paper's small experiments: command line, models, input pipelines.

* `rigl_keras.experiments.train`: the training command line
  (`python -m rigl_keras.experiments.train`, console script `rigl-train`)
  and `train(TrainConfig(...))`, which runs the same thing from Python.
* `rigl_keras.experiments.config`: `TrainConfig`, the run's configuration,
  checked without TensorFlow.
* `rigl_keras.experiments.startup`: TensorFlow loaded without its start-up
  noise, for the command line.
* `rigl_keras.experiments.models`: LeNet-300-100, LeNet-5 and the Wide
  ResNet, masked or plain, and the Small-Dense baseline's widths.
* `rigl_keras.experiments.data`: TFDS image classification pipelines.

Not part of the library: `import rigl_keras` never imports this package,
which needs `absl-py` and `tensorflow-datasets`. Import its modules by name.
"""
