// Run-time CPU detection and the choice of kernel ISA (see cpu_dispatch.hpp).
#include "cpu_dispatch.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace anomaly_edge {
namespace {

constexpr const char* kEnvironmentVariable = "ANOMALY_EDGE_ISA";

// set_isa_override's choice as an Isa value; -1 = none.
std::atomic<int> isa_override{-1};

std::string supported_names() {
  std::string names;
  for (Isa isa : supported_isas()) names += std::string(names.empty() ? "" : ", ") + isa_name(isa);
  return names;
}

Isa isa_from_environment() {
  const char* value = std::getenv(kEnvironmentVariable);
  if (value == nullptr || *value == '\0') {
    const std::vector<Isa> isas = supported_isas();
    return isas.back();
  }
  const std::string asked_by = std::string(kEnvironmentVariable) + "=" + value;
  const std::string or_unset = std::string("; or unset ") + kEnvironmentVariable +
                               " to use the fastest one this CPU supports";
  Isa isa;
  try {
    isa = parse_isa(value);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(asked_by + ": " + e.what() + or_unset);
  }
  try {
    require_supported(isa, asked_by);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(e.what() + or_unset);
  }
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Baseline:
      return "baseline";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : kIsas)
    if (name == isa_name(isa)) return isa;
  throw std::invalid_argument("unknown instruction set '" + name +
                              "': choose one of baseline, avx2, avx512");
}

CpuFeatures cpu_features() {
  // Asked once per process: every post-processing call checks its ISA against these.
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if AE_X86_KERNELS
    // libgcc / compiler-rt also check that the OS saves the AVX and AVX-512 registers (XCR0).
    __builtin_cpu_init();
    f.sse2 = __builtin_cpu_supports("sse2");
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
#endif
    return f;
  }();
  return features;
}

bool isa_supported(Isa isa) {
  const CpuFeatures f = cpu_features();
  switch (isa) {
    case Isa::Baseline:
      return true;
    case Isa::Avx2:
      return AE_X86_KERNELS && f.avx2;
    case Isa::Avx512:
      return AE_X86_KERNELS && f.avx512f && f.avx512bw && f.avx512vl;
  }
  return false;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : kIsas)
    if (isa_supported(isa)) isas.push_back(isa);
  return isas;
}

void require_supported(Isa isa, const std::string& asked_by) {
  if (isa_supported(isa)) return;
  throw std::invalid_argument(
      asked_by + ": this " + (AE_X86_KERNELS ? "CPU" : "build") + " cannot run " +
      isa_name(isa) + "; choose one it supports: " + supported_names());
}

Isa default_isa() {
  // A function-local static: initialised once, thread-safely; a throw leaves it unset, so
  // every later call reports the same bad setting.
  static const Isa isa = isa_from_environment();
  return isa;
}

void set_isa_override(Isa isa) {
  require_supported(isa, std::string("set_isa('") + isa_name(isa) + "')");
  isa_override.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void clear_isa_override() { isa_override.store(-1, std::memory_order_relaxed); }

Isa active_isa() {
  const int isa = isa_override.load(std::memory_order_relaxed);
  return isa < 0 ? default_isa() : static_cast<Isa>(isa);
}

}  // namespace anomaly_edge
