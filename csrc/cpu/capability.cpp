// Which build of the vectorised CPU kernels serves this process (see capability.h).
#include "capability.h"

#include <ATen/Version.h>

#include <string>

namespace pyengine::ops::cpu {

namespace {

const char* choose() {
#ifdef PYENGINE_CPU_DISPATCH
  // ATen's capability honours ATEN_CPU_CAPABILITY and what torch was built for; the CPU check
  // guards against that variable asking for more than the CPU has.
  const std::string aten = at::get_cpu_capability();
  if ((aten == "AVX2" || aten == "AVX512") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return "AVX2";
  }
#endif
  return PYENGINE_STRINGIFY(CPU_CAPABILITY);
}

}  // namespace

const char* capability() {
  static const char* const chosen = choose();
  return chosen;
}

}  // namespace pyengine::ops::cpu
