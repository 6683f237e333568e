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
    url="https://github.com/rigl-keras/rigl_keras",
    author="rigl_keras authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    project_urls={
        "Paper (Evci et al., Rigging the Lottery)": "https://arxiv.org/abs/1911.11134",
        "Original code (google-research/rigl)": "https://github.com/google-research/rigl",
        "Changelog": "https://github.com/rigl-keras/rigl_keras/blob/main/CHANGELOG.md",
    },
    keywords=[
        "sparse training",
        "dynamic sparse training",
        "rigl",
        "pruning",
        "sparsity",
        "keras",
        "tensorflow",
        "deep learning",
    ],
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
            "pytest-xdist",
            "hypothesis",
            "matplotlib",
            "nbclient",
            "nbformat",
            "ipykernel",
            "ai-edge-litert",
            "keras-hub",
            "mkdocs>=1.6,<2",
            "mkdocstrings[python]>=1.0",
            "mkdocstrings-python>=2.0",
            "pymdown-extensions",
        ],
        "tflite": ["ai-edge-litert"],
    },
    entry_points={
        "console_scripts": ["rigl-train=rigl_keras.experiments.train:run"],
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Software Development :: Libraries :: Python Modules",
    ],
)
