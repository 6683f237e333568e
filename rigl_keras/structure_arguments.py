"""The `structure=` argument: one structure for every weight, or a dict.

`RigLCallback`, `GradualPruningCallback`, `sparsity_report` and
`rigl_keras.structures.check` take `structure=` as None (unstructured), a
`rigl_keras.structures.Structure` (or its config) for every masked weight,
or a dict `{weight path or unique layer name: Structure or None}`. These
functions validate and serialize that argument;
`rigl_keras.structures.per_weight` resolves it against a model's weights.

Example:

>>> from rigl_keras.structures import NM
>>> serialize_argument({"fc": NM(2, 4), "head": None})["head"] is None
True
"""

from rigl_keras import structures

__all__ = ["deserialize_argument", "serialize_argument", "validate_argument"]


def validate_argument(structure):
    """Raises `ValueError` unless `structure` is a valid `structure=` value.

    Valid: None, a `Structure` or its config, or a dict of them (or None)
    keyed by weight path or layer name.
    """
    if structures.is_per_weight(structure):
        for name, value in structure.items():
            try:
                structures.get(value)
            except ValueError:
                raise ValueError(
                    "Every value of a `structure` dict must be a "
                    "rigl_keras.structures.Structure or None. "
                    f"Received: structure[{name!r}]={value!r}"
                ) from None
        return
    try:
        structures.get(structure)
    except ValueError:
        raise ValueError(
            "`structure` must be None, a rigl_keras.structures.Structure "
            "(Block, NM) or a dict {weight: Structure or None}. "
            f"Received: structure={structure!r}"
        ) from None


def serialize_argument(structure):
    """The config of a `structure=` argument (a structure, dict or None)."""
    if structures.is_per_weight(structure):
        return {name: structures.serialize(value) for name, value in structure.items()}
    return structures.serialize(structures.get(structure))


def deserialize_argument(config):
    """The `structure=` argument of a `serialize_argument` config."""
    if structures.is_per_weight(config):
        return {name: structures.deserialize(value) for name, value in config.items()}
    return structures.deserialize(config)
