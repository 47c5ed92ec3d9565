// The Python module pyengine._C. It defines no functions: importing it loads this library,
// whose static initialisers (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in the other files)
// register the pyengine:: ops. WITH_CUDA tells Python whether CUDA kernels were built,
// CPU_KERNEL_BUILDS which builds of the vectorised CPU kernels it holds and CPU_CAPABILITY which
// one serves this process (cpu/capability.h).
#include <pybind11/pybind11.h>

#include "cpu/capability.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
#ifdef PYENGINE_CPU_DISPATCH
  m.attr("CPU_KERNEL_BUILDS") = pybind11::make_tuple("DEFAULT", "AVX2");
#else
  m.attr("CPU_KERNEL_BUILDS") = pybind11::make_tuple(PYENGINE_STRINGIFY(CPU_CAPABILITY));
#endif
  m.attr("CPU_CAPABILITY") = pyengine::ops::cpu::capability();
}
