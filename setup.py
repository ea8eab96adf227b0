"""Colorization pipeline: image folders -> LAB TFRecords -> Keras autoencoders -> TF Serving.

setup.py also ships the code to remote Beam workers (--setup_file ./setup.py).
Exact versions that are tested together live in constraints.txt:

    pip install -c constraints.txt -e ".[test]"
"""

from setuptools import find_packages, setup

setup(
    name="colorization-pipeline",
    version="0.1.0",
    description="A TFX-style training pipeline for automatic image colorization in LAB space.",
    python_requires=">=3.9,<3.13",
    packages=find_packages(include=["components", "components.*", "schemas", "schemas.*", "pipeline",
                                    "pipeline.*", "serving", "serving.*"]),
    install_requires=[
        # tensorflow-io 0.37.1 is built against TensorFlow 2.16: keep these three together.
        "tensorflow>=2.16.1,<2.17",
        "tensorflow-io==0.37.1",
        "tensorflow-serving-api>=2.16.1,<2.17",
        "keras>=3.0,<4",
        "keras-tuner>=1.4.7,<1.5",
        "scikit-learn>=1.5",  # keras-tuner's BayesianOptimization
        "apache-beam>=2.61.0,<2.62",
        # protobuf 4 (TensorFlow 2.16): tensorflow-metadata 1.16 is the last line built on it.
        "tensorflow-metadata>=1.16.1,<1.17",
        "protobuf>=4.25,<5",
        "numpy>=1.26,<2",
        "pillow>=10.4",
        "numba>=0.60",  # ingest's compiled per-pixel pass (components/kernels.py)
        "isal>=1.7",
        "google-crc32c>=1.5",
        "pyyaml>=6",
        "grpcio>=1.60",  # serving's gRPC server and client
        "requests>=2.31",  # serving's REST client
        "matplotlib>=3.9",  # the run report's charts (Agg backend, no display)
    ],
    extras_require={
        # kfp: the Kubeflow compile is tested (compiling only); pytest-xdist: pytest.ini runs the tests on every core
        "test": ["pytest>=8", "pytest-xdist>=3.6", "scikit-image>=0.24", "kfp>=2.13,<2.14", "kfp-kubernetes>=1.5,<2"],
        "gcp": ["apache-beam[gcp]>=2.61.0,<2.62"],
        # python -m pipeline.kubeflow; kfp 2.14+ needs protobuf 6, which TensorFlow 2.16 cannot use.
        "kubeflow": ["kfp>=2.13,<2.14", "kfp-kubernetes>=1.5,<2"],
    },
)
