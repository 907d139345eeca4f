"""Row softmax: the library's proof-of-mechanism op on all four backends."""

from lmini_kernels.ops.row_softmax.api import row_softmax

__all__ = ["row_softmax"]
