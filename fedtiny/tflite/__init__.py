"""TFLite both ways: export a fedtiny model as a .tflite flatbuffer, run .tflite files (LiteRT), frozen backbones.

`runtime` holds the interpreter, export and backbone functions and the `fedtiny export` command;
`writer` builds and serializes the flatbuffer graph. The names below are the public API.
"""
from .runtime import *  # noqa: F401,F403
from .runtime import __all__  # noqa: F401
