"""Profiling suites: FLOP accounting (:mod:`.flops`), memory prediction (:mod:`.memory`), NVTX
ranges (:mod:`.nvtx`) and the roofline (:mod:`.roofline`). ``lmini profile`` runs them
(:mod:`.cli`). Submodules are imported on use so ``import lmini_kernels`` stays light."""
