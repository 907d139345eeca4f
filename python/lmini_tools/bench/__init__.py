"""Benchmarks: one harness (:mod:`lmini_tools.bench.harness`), suites registered in
:data:`lmini_tools.bench.cli.SUITES`, run with ``lmini bench <suite>``."""
