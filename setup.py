"""The one part of the build pyproject.toml cannot say: the fast step's optional C extension (bridge/_faststep.c).

`optional=True`: without a C compiler the install goes on and faststep.py's pure-Python step runs instead."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bidviz.bridge._faststep", ["bridge/_faststep.c"], optional=True)])
