// The CPU norm backwards split the rows into one part per thread, each writing its own contiguous
// row of dweight_parts / dbias_parts (the op layer allocates max(1, nthreads) rows).
#pragma once
#include <algorithm>

#include "common/check.h"

namespace ssm::bind {

template <typename NormBwdParams>
void set_cpu_parts(const char* op, NormBwdParams& p, int nthreads) {
  p.parts = std::max(1, nthreads);
  SSM_CHECK(p.dweight_parts.stride[1] == 1 && (!p.dbias_parts.present() || p.dbias_parts.stride[1] == 1), op,
            "dweight_parts and dbias_parts must be contiguous rows");
}

}  // namespace ssm::bind
