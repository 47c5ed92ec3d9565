// The Python module pyengine._C. It defines no functions: importing it loads this library,
// whose static initialisers (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in the other files)
// register the pyengine:: ops. WITH_CUDA tells Python whether CUDA kernels were built.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
