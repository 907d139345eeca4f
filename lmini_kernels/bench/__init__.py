"""Benchmarks: one harness (:mod:`lmini_kernels.bench.harness`), suites registered in
:data:`lmini_kernels.bench.cli.SUITES`, run with ``lmini bench <suite>``."""
