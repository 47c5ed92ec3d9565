// The AVX2 + FMA build of ../projection_step_kernel.cpp (see ../capability.h).
#define PYENGINE_AVX2_BUILD
#include "../projection_step_kernel.cpp"
