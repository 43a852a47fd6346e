"""The package list, computed (everything else is in pyproject.toml).

``configs/`` (top level in a clone) is installed as ``segloss.configs``; each config group folder is listed as
a package of its own so that setuptools ships its YAML files as package data.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONFIG_GROUPS = [f"segloss.configs.{group}" for group in find_namespace_packages("configs")]
setup(packages=[*find_packages("src"), "segloss.configs", *CONFIG_GROUPS])
