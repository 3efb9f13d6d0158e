// A persistent pool of worker threads shared by all CPU kernels.
#pragma once
#include <cstdint>
#include <functional>

namespace ssm::cpu {

// Splits [0, n) into contiguous ranges run on up to `nthreads` threads (the caller's
// thread included) and returns when all are done. fn(begin, end) must not throw.
void parallel_for(int64_t n, int nthreads, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace ssm::cpu
