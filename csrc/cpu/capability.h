// Two builds of each vectorised CPU kernel file, chosen at run time as ATen's DispatchStub does:
// the baseline build (csrc/cpu/<op>_kernel.cpp, namespace DEFAULT) runs on any CPU; on x86 with
// GCC an AVX2 + FMA build (csrc/cpu/avx2/<op>_kernel.cpp includes the same file with
// PYENGINE_AVX2_BUILD, namespace AVX2) serves calls where the CPU has AVX2 and FMA.
//
// A kernel file includes this header after its other headers and before ATen/cpu/vec: at::vec
// picks its implementation and namespace from CPU_CAPABILITY, and the target pragma compiles only
// what follows it for AVX2, so the inline functions of the headers included before keep their
// baseline code and the linker never swaps an AVX2 copy into baseline code.
#pragma once

#include <cstring>

#ifdef PYENGINE_AVX2_BUILD
#if !defined(__GNUC__) || defined(__clang__)
#error "the AVX2 kernel builds need GCC's #pragma GCC target; build with PYENGINE_CPU_DISPATCH=0"
#endif
// The headers ATen/cpu/vec includes besides its own, parsed here for the baseline so that their
// inline functions (outside at::vec's CPU_CAPABILITY namespace) get no AVX2 copy; with another
// torch, scripts/check_cpu_dispatch.py finds any header that slipped past this list.
#include <ATen/AccumulateType.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e4m3fnuz.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Float8_e5m2fnuz.h>
#include <c10/util/Load.h>
#include <c10/util/copysign.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint8.h>
#pragma GCC target("avx2,fma,f16c")
// GCC warns about the ABI of at::vec's lambdas that return __m256; all code of an AVX2 build is
// compiled with AVX (scripts/check_cpu_dispatch.py), so no call mixes the two ABIs.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC's pragma does not define these in C++; sleef.h declares its AVX2 functions only under them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#elif !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY DEFAULT
#endif

#define PYENGINE_STRINGIFY_(x) #x
#define PYENGINE_STRINGIFY(x) PYENGINE_STRINGIFY_(x)

namespace pyengine::ops::cpu {

// The build of the vectorised kernels that serves this process, fixed at load: "AVX2" where it
// was built, the CPU has AVX2 and FMA, and ATen's own capability is AVX2 or above (so
// ATEN_CPU_CAPABILITY=default selects the baseline for both); else the baseline's CPU_CAPABILITY.
const char* capability();

}  // namespace pyengine::ops::cpu

// Registers the CPU kernels of the build that serves this process, once (in the baseline build):
// `registrar` is the kernel file's `void registrar(torch::Library&)`, which each build defines.
#if defined(PYENGINE_AVX2_BUILD)
#define PYENGINE_REGISTER_CPU_KERNELS(registrar)
#elif defined(PYENGINE_CPU_DISPATCH)
#define PYENGINE_REGISTER_CPU_KERNELS(registrar)                                        \
  namespace pyengine::ops::AVX2 {                                                       \
  void registrar(torch::Library& m);                                                    \
  }                                                                                     \
  TORCH_LIBRARY_IMPL(pyengine, CPU, m) {                                                \
    const bool avx2 = std::strcmp(::pyengine::ops::cpu::capability(), "AVX2") == 0;     \
    (avx2 ? ::pyengine::ops::AVX2::registrar : ::pyengine::ops::DEFAULT::registrar)(m); \
  }
#else
#define PYENGINE_REGISTER_CPU_KERNELS(registrar) \
  TORCH_LIBRARY_IMPL(pyengine, CPU, m) {         \
    ::pyengine::ops::CPU_CAPABILITY::registrar(m); \
  }
#endif
