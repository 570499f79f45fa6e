// Which instruction set the post-processor's vector kernels use.
//
// The library is built for the portable x86-64 baseline (SSE2); AVX2 and AVX-512 versions of
// the hot kernels are compiled beside it with function-level target attributes and chosen at
// run time from what the CPU offers, so no build ever runs an instruction its CPU lacks.
// ANOMALY_EDGE_ISA=baseline|avx2|avx512 overrides the choice (for tests and benchmarks).
#pragma once

#include <string>
#include <vector>

// x86-64 kernels need GCC or Clang (target attributes, __builtin_cpu_supports); any other
// target or compiler builds the baseline alone.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AE_X86_KERNELS 1
#else
#define AE_X86_KERNELS 0
#endif

namespace anomaly_edge {

// Ordered from the most portable to the fastest.
enum class Isa { Baseline = 0, Avx2 = 1, Avx512 = 2 };
constexpr Isa kIsas[] = {Isa::Baseline, Isa::Avx2, Isa::Avx512};

// "baseline", "avx2" or "avx512".
const char* isa_name(Isa isa);

// Throws std::invalid_argument for anything but the names isa_name gives.
Isa parse_isa(const std::string& name);

// The CPU features the kernels care about, as the running CPU and OS offer them.
struct CpuFeatures {
  bool sse2 = false;
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
};
CpuFeatures cpu_features();

// Compiled into this build and runnable on this CPU (AVX-512 needs F, BW and VL).
bool isa_supported(Isa isa);
std::vector<Isa> supported_isas();  // baseline first

// Throws std::invalid_argument, naming what the CPU does support, unless isa_supported(isa).
void require_supported(Isa isa, const std::string& asked_by);

// What the post-processor uses by default: ANOMALY_EDGE_ISA when set, else the fastest
// supported ISA. Decided once per process (thread-safe); throws std::invalid_argument while
// ANOMALY_EDGE_ISA names an unknown ISA or one this CPU lacks.
Isa default_isa();

// A process-wide override of default_isa() for tests and benchmarks, seen whole by every
// thread. set_isa_override(isa) throws std::invalid_argument (and changes nothing) unless this
// CPU can run `isa`; clear_isa_override() returns to default_isa().
void set_isa_override(Isa isa);
void clear_isa_override();

// The ISA in use now: the override when one is set, else default_isa().
Isa active_isa();

}  // namespace anomaly_edge
