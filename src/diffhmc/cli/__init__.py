"""The ``diffhmc`` command line: one small module per command (``demo``, ``infer`` with
``recalibrate``, ``maps`` for simulate/stats/sample/validate-emulator, ``dataset``,
``train``, ``baseline``, ``robustness``), shared argument blocks (``common``), and the
parser, error handling and allocator re-exec (``main``). A command module only parses
arguments and calls one workflow or library function.

Imports: every library subpackage; nothing in the package imports it.
"""
