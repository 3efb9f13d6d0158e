// Precondition checks that C++ kernels and bindings make on their own inputs.
// A failed check throws std::invalid_argument, which the bindings surface as ValueError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ssm {

template <typename... Args>
[[noreturn]] void fail(const char* op, Args&&... parts) {
  std::ostringstream os;
  os << op << ": ";
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

}  // namespace ssm

#define SSM_CHECK(cond, op, ...)            \
  do {                                      \
    if (!(cond)) ::ssm::fail(op, __VA_ARGS__); \
  } while (0)
