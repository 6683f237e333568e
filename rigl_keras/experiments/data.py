"""TFDS input pipelines for image classification.

`load_dataset` reads any TensorFlow Datasets image-classification dataset
with `image` and `label` features (tested on `mnist` and `cifar10`) and
returns batches of `(float32 image in [0, 1], int64 label)`. It never
downloads unless asked (`download=True`): by default TFDS looks in
`data_dir`, or in its own default folder, which the `TFDS_DATA_DIR`
environment variable overrides. A dataset that is not there raises
`DatasetUnavailableError` with a message saying where it looked and how to
point elsewhere.

Pipeline: load (`as_supervised=True`, without TFDS's own auto-caching) ->
cache the decoded uint8 images (optional) -> shuffle (seeded) -> repeat
(optional) -> augment (optional: pad 4 pixels with zeros, random crop back
to size, random horizontal flip; stateless ops keyed by the seed and the
example's position in the stream, so a run is reproducible) -> scale to
[0, 1] float32 -> batch -> prefetch.

Example:

```python
train = load_dataset("cifar10", "train", batch_size=128, augment=True,
                     repeat=True)
test = load_dataset("cifar10", "test", batch_size=500, shuffle=False)
info = dataset_info("cifar10")  # input_shape (32, 32, 3), 10 classes
```
"""

import dataclasses
import os

import tensorflow as tf

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "dataset_info",
    "load_dataset",
    "num_examples",
]

_SHUFFLE_BUFFER = 10_000
_PAD = 4


class DatasetError(ValueError):
    """A dataset cannot be used: unknown name, split, or wrong features."""


class DatasetUnavailableError(DatasetError):
    """TFDS knows the dataset but its files are not where TFDS looked."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs to know about a dataset.

    Attributes:
        name: The TFDS name.
        input_shape: `(height, width, channels)` of one image.
        num_classes: Number of labels.
        splits: `{split_name: num_examples}` when TFDS knows them (it does
            not for a mocked dataset), else `{}`.
    """

    name: str
    input_shape: tuple
    num_classes: int
    splits: dict


def _tfds():
    # Imported lazily: tensorflow_datasets is slow to import.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


def _where(data_dir):
    if data_dir:
        return f"data_dir={str(data_dir)!r}"
    env = os.environ.get("TFDS_DATA_DIR")
    if env:
        return f"TFDS_DATA_DIR={env!r}"
    return "TFDS's default folder (~/tensorflow_datasets; TFDS_DATA_DIR is unset)"


def _unavailable(name, data_dir, reason):
    return DatasetUnavailableError(
        f"Cannot find the TFDS dataset {name!r} in {_where(data_dir)} "
        f"({reason}). Point --data_dir (`data_dir=`) at the folder that "
        f"contains '{name}/', or set the TFDS_DATA_DIR environment variable "
        "to it; or pass --download (`download=True`) to let TFDS download "
        "and prepare it, which needs internet access."
    )


def _builder(name, data_dir):
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DatasetError(
            f"TFDS has no dataset named {name!r}. Use a TFDS image "
            "classification dataset such as 'mnist' or 'cifar10'. "
            f"Received: dataset={name!r}"
        ) from error


def dataset_info(name, data_dir=None):
    """Input shape, number of classes and split sizes of a TFDS dataset.

    Reads TFDS's metadata only (no data files are needed).

    Args:
        name: A TFDS dataset name, e.g. `"mnist"`.
        data_dir: Folder holding TFDS datasets; `None` for TFDS's default.

    Returns:
        A `DatasetInfo`.

    Raises:
        DatasetError: If TFDS has no such dataset, or it lacks an `image`
            feature of fixed shape or a `label` class feature.

    Example:

    >>> dataset_info("mnist").input_shape
    (28, 28, 1)
    """
    builder = _builder(name, data_dir)
    features = builder.info.features
    tfds = _tfds()
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if not isinstance(label, tfds.features.ClassLabel) or image is None:
        raise DatasetError(
            f"Dataset {name!r} is not an image classification dataset with "
            "`image` and `label` (class label) features. "
            f"Received: features={list(features)}"
        )
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DatasetError(
            f"Dataset {name!r} has images of varying size {shape}; only "
            "fixed-size images (such as MNIST's or CIFAR's) are supported."
        )
    try:
        splits = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
    except (KeyError, ValueError):
        splits = {}
    return DatasetInfo(name, shape, int(label.num_classes), splits)


def _load(name, split, data_dir, download):
    tfds = _tfds()
    try:
        return tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            as_supervised=True,
            download=download,
            # TFDS caches small datasets by itself; `load_dataset(cache=)`
            # decides instead (a second cache, or a partly read one, only
            # costs memory and warnings).
            read_config=tfds.ReadConfig(try_autocache=False),
        )
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DatasetError(
            f"TFDS has no dataset named {name!r}. Received: dataset={name!r}"
        ) from error
    except (AssertionError, OSError, tf.errors.NotFoundError) as error:
        # TFDS signals "not prepared in data_dir" with an AssertionError.
        raise _unavailable(name, data_dir, "no prepared files") from error
    except ValueError as error:
        if "split" in str(error).lower():
            raise DatasetError(
                f"Dataset {name!r} has no split {split!r}: {error}"
            ) from error
        raise
    except Exception as error:  # pylint: disable=broad-except
        # A failed download (no internet) surfaces as many error types.
        if download:
            raise _unavailable(
                name, data_dir, f"downloading failed: {type(error).__name__}: {error}"
            ) from error
        raise


def num_examples(name, split, data_dir=None, download=False):
    """Number of examples in a split (read from TFDS's split metadata).

    Args:
        name: A TFDS dataset name.
        split: A split, e.g. `"train"` or `"train[:10%]"`.
        data_dir: As in `load_dataset`.
        download: As in `load_dataset`.

    Returns:
        A positive int.

    Raises:
        DatasetUnavailableError, DatasetError: As `load_dataset`.

    Example:

    >>> num_examples("mnist", "test")  # doctest: +SKIP
    10000
    """
    count = int(_load(name, split, data_dir, download).cardinality())
    if count < 1:
        raise DatasetError(
            f"TFDS does not know the size of split {split!r} of {name!r} "
            f"(cardinality {count}), or it is empty."
        )
    return count


def _augment(image, seed):
    """Pads by 4 with zeros, crops back at random, flips at random."""
    height, width, channels = image.shape
    padded = tf.pad(image, [[_PAD, _PAD], [_PAD, _PAD], [0, 0]])
    crop_seed = tf.stack([seed[0], seed[1] * 2])
    flip_seed = tf.stack([seed[0], seed[1] * 2 + 1])
    image = tf.image.stateless_random_crop(
        padded, (height, width, channels), seed=crop_seed
    )
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def load_dataset(
    name,
    split,
    batch_size,
    data_dir=None,
    augment=False,
    shuffle=True,
    seed=0,
    repeat=False,
    download=False,
    drop_remainder=False,
    cache=True,
):
    """A batched `tf.data.Dataset` of `(image, label)` from TFDS.

    Args:
        name: A TFDS image classification dataset, e.g. `"mnist"`.
        split: A TFDS split, e.g. `"train"`, `"test"` or `"train[:10%]"`.
        batch_size: Positive int.
        data_dir: Folder holding TFDS datasets; `None` for TFDS's default
            (`TFDS_DATA_DIR` if set).
        augment: Random crop (after zero-padding by 4 pixels) and random
            horizontal flip, the standard CIFAR augmentation.
        shuffle: Shuffle examples (10,000-example buffer), reshuffling every
            pass.
        seed: Integer seed of the shuffle and the augmentation.
        repeat: Repeat forever (for `fit(..., steps_per_epoch=...)`).
        download: Let TFDS download and prepare a missing dataset.
        drop_remainder: Drop the last incomplete batch.
        cache: Cache the decoded images in memory after the first pass
            (TFDS's own caching of small datasets is off). Leave it off for
            a run that reads less than one pass: TensorFlow warns about a
            cache that was not fully read.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: float32 images in
        `[0, 1]` of shape `(batch, height, width, channels)` and int64
        labels of shape `(batch,)`.

    Raises:
        DatasetUnavailableError: If the dataset's files are not in the data
            folder (and `download` is False or downloading failed).
        DatasetError: For an unknown dataset or split.
        ValueError: For a bad `batch_size` or `seed`.

    Example:

    ```python
    ds = load_dataset("mnist", "test", batch_size=256, shuffle=False)
    images, labels = next(iter(ds))  # (256, 28, 28, 1) float32, (256,) int64
    ```
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
    ds = _load(name, split, data_dir, download)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        # The counter numbers examples across repeats: every example of
        # every epoch gets its own (seed, index) stateless seed.
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda pair, index: (
                _augment(pair[0], tf.stack([tf.constant(seed, tf.int64), index])),
                pair[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.map(
        lambda image, label: (tf.cast(image, tf.float32) / 255.0, label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
