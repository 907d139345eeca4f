// Every CUDA launcher, compiled for the host SIMT layer. One line per op.
#include "cuda/row_softmax.cu"
#include "cuda/prefusion_attention.cu"
#include "cuda/compress.cu"
