"""The tools above the kernel library and the reference model: the ``lmini`` command, the demo,
the benchmark suites, the FLOPs/memory/roofline profiling suites and the official-module
baselines they measure against.

Layers point down only: ``lmini_tools`` imports ``lmini_kernels`` and ``llava_mini``; neither of
those imports it (``tests/build/test_layers.py`` checks the import graph).
"""
