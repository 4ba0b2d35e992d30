"""Package list for setuptools; all metadata lives in pyproject.toml.

The import namespace is one package, ``unity_legion``, whose parts live in
several top-level folders of the repository (``[tool.setuptools] package-dir``
in pyproject.toml maps them).  This lists each mapped root and every
subpackage found below it, so a new subpackage needs no edit anywhere.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

# Keep in sync with [tool.setuptools] package-dir in pyproject.toml.
ROOTS = {
    "unity_legion": "unity_legion",
    "unity_legion.operators": "operators",
    "unity_legion.mappers": "mappers",
    "unity_legion.models": "models",
}


def _packages() -> list[str]:
    packages = []
    for name, folder in ROOTS.items():
        path = HERE / folder
        if not path.is_dir():
            continue
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(str(path))]
    return packages


setup(packages=_packages())
