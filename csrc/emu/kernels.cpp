// Every CUDA launcher, compiled for the host SIMT layer. One line per op.
#include "cuda/row_softmax.cu"
