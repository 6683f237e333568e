"""Packaging for rigl_keras: RigL dynamic sparse training for Keras 3."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent
_README = _HERE / "README.md"

setuptools.setup(
    name="rigl_keras",
    version="0.1.0",
    description=(
        "RigL and other dynamic sparse training methods for TensorFlow "
        "and Keras 3."
    ),
    long_description=(
        _README.read_text(encoding="utf-8") if _README.exists() else ""
    ),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["rigl_keras", "rigl_keras.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "absl-py",
        "tensorflow-datasets",
        "importlib_resources",
        "tensorboard",
    ],
    extras_require={
        "test": [
            "pytest",
            "hypothesis",
            "matplotlib",
            "nbclient",
            "nbformat",
            "ipykernel",
            "ai-edge-litert",
        ],
        "tflite": ["ai-edge-litert"],
    },
    entry_points={
        "console_scripts": ["rigl-train=rigl_keras.train:run"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
