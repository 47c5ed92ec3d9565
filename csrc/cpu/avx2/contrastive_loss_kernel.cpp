// The AVX2 + FMA build of ../contrastive_loss_kernel.cpp (see ../capability.h).
#define PYENGINE_AVX2_BUILD
#include "../contrastive_loss_kernel.cpp"
