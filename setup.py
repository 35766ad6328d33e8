"""Maps the repository's top-level package folders into one installed namespace, `tandem`.

pyproject.toml holds everything else; only this mapping needs code (the package list is
found, not written by hand, so a new subpackage cannot be left out).
"""

from setuptools import find_packages, setup

TOP_LEVEL = ("protocols", "hardware_profiles", "tasks", "model_compiler", "edge_agent", "cloud_hub", "sim")

setup(
    packages=["tandem", *(f"tandem.{name}" for name in find_packages(include=[f"{top}*" for top in TOP_LEVEL]))],
    package_dir={"tandem": "tandem", **{f"tandem.{top}": top for top in TOP_LEVEL}},
)
