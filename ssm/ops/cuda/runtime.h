#pragma once
#include <string>

namespace ssm::cuda {

int device_count();               // 0 when no driver or no device
std::string last_error_string();  // and clears it

}  // namespace ssm::cuda
