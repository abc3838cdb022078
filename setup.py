"""Packaging for lxmert-pipeline: raw images to LXMERT answers."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: The import names this project installs (the layout it was asked for).
TOP_LEVEL = ("detector", "encoder", "pipeline", "weights", "shapesworld")


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


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
            "extract_features=pipeline.cli:main",
            "answer=pipeline.answer_cli:main",
            "judge=pipeline.judge_cli:main",
            "lxmert-finetune=pipeline.finetune_cli:main",
            "lxmert-demo=pipeline.web.cli:main",
        ]
    },
)
