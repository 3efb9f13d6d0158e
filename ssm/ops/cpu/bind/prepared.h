// Prepared kernel calls for the eager plans (ssm/ops/_kernels.py, prepare): `prepare_<name>(nslots,
// args...)` runs the binding's own builder and checks once, on tensor references whose data pointers
// are markers; the PreparedCall it returns then takes only the call's tensors (and the thread count),
// writes their data pointers where the markers landed in the param struct, and launches. A planned
// call so crosses with its tensors as they are instead of one list per tensor built in Python.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/bind/common.h"

#include <Python.h>

namespace ssm::bind {

// Marker of tensor slot i (0-based): kMarkTag + (i + 1) * kMarkStep, a non-canonical address (bits
// 63..48 = 0x5353) that no real pointer, size or stride of a tensor has.
constexpr uint64_t kMarkTag = uint64_t(0x5353) << 48;
constexpr uint64_t kMarkStep = uint64_t(1) << 32;
constexpr uint64_t kMarkMask = uint64_t(0xffff) << 48;

// (slot, byte offset) of every marker in a param struct's 8-byte words. A tagged word that is not a
// whole marker (a pointer the builder derived from one) or a slot no word holds is an error: such a
// struct cannot be prepared, and the plan keeps the plain binding.
inline std::vector<std::pair<int, size_t>> marker_slots(const unsigned char* bytes, size_t size, int nslots) {
  std::vector<std::pair<int, size_t>> slots;
  std::vector<bool> seen(nslots, false);
  for (size_t offset = 0; offset + sizeof(uint64_t) <= size; offset += sizeof(uint64_t)) {
    uint64_t word;
    std::memcpy(&word, bytes + offset, sizeof(word));
    if ((word & kMarkMask) != kMarkTag) continue;
    const uint64_t index = (word - kMarkTag) / kMarkStep;
    SSM_CHECK(word == kMarkTag + index * kMarkStep && index >= 1 && index <= uint64_t(nslots), "prepare",
              "a pointer derived from a tensor's address (a prepared call fills in whole pointers only)");
    slots.emplace_back(int(index - 1), offset);
    seen[index - 1] = true;
  }
  for (int i = 0; i < nslots; ++i) SSM_CHECK(seen[i], "prepare", "tensor slot ", i, " is not in the params");
  return slots;
}

class PreparedCall {
 public:
  using Run = std::function<void(const uint64_t* pointers, int nthreads)>;
  PreparedCall(int nslots, Run run) : nslots_(nslots), run_(std::move(run)) {}
  // args: the call's tensors in the plan's order (None for an absent one, skipped), then the thread
  // count; each present tensor's data_ptr() fills the next slot
  void call(nb::args args) const {
    PyObject* tuple = args.ptr();
    const Py_ssize_t nargs = PyTuple_GET_SIZE(tuple);
    SSM_CHECK(nargs >= 1, "prepared call", "expected the tensors and the thread count");
    std::vector<uint64_t> many(nargs > kMaxInline ? nargs : 0);
    uint64_t inline_ptrs[kMaxInline];
    uint64_t* ptrs = nargs > kMaxInline ? many.data() : inline_ptrs;
    int n = 0;
    for (Py_ssize_t i = 0; i + 1 < nargs; ++i) {
      PyObject* t = PyTuple_GET_ITEM(tuple, i);
      if (t == Py_None) continue;
      ptrs[n++] = data_ptr(t);
    }
    SSM_CHECK(n == nslots_, "prepared call", "expected ", nslots_, " tensors, got ", n);
    const long nthreads = PyLong_AsLong(PyTuple_GET_ITEM(tuple, nargs - 1));
    if (nthreads == -1 && PyErr_Occurred()) throw nb::python_error();
    SSM_CHECK(nthreads >= 1, "prepared call", "thread count must be >= 1, got ", nthreads);
    nb::gil_scoped_release release;
    run_(ptrs, int(nthreads));
  }
  int nslots() const { return nslots_; }

 private:
  static constexpr int kMaxInline = 32;

  // t.data_ptr(), which must not be null
  static uint64_t data_ptr(PyObject* t) {
    static PyObject* name = PyUnicode_InternFromString("data_ptr");
    PyObject* value = PyObject_CallMethodNoArgs(t, name);
    if (value == nullptr) throw nb::python_error();
    const uint64_t ptr = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    if (ptr == uint64_t(-1) && PyErr_Occurred()) throw nb::python_error();
    SSM_CHECK(ptr != 0, "prepared call", "null data pointer");
    return ptr;
  }

  int nslots_;
  Run run_;
};

template <typename P, typename Launch>
PreparedCall make_prepared(const P& params, int nslots, Launch launch) {
  static_assert(std::is_trivially_copyable_v<P> && alignof(P) >= alignof(uint64_t));
  auto slots = marker_slots(reinterpret_cast<const unsigned char*>(&params), sizeof(P), nslots);
  return PreparedCall(nslots, [params, slots = std::move(slots), launch](const uint64_t* pointers, int nthreads) {
    P p = params;
    for (const auto& [slot, offset] : slots)
      std::memcpy(reinterpret_cast<unsigned char*>(&p) + offset, &pointers[slot], sizeof(uint64_t));
    launch(p, nthreads);
  });
}

inline void bind_prepared(nb::module_& m) {
  nb::class_<PreparedCall>(m, "PreparedCall",
                           "A kernel call whose arguments were checked once: call(*tensors, nthreads).")
      .def("__call__", &PreparedCall::call)
      .def_prop_ro("nslots", &PreparedCall::nslots);
  m.attr("PREPARED_MARK_TAG") = kMarkTag;
  // The ops' plan caches (module globals) keep prepared calls until the interpreter's teardown,
  // which may run after this module's: not leaks, so no report of them at exit.
  nb::set_leak_warnings(false);
  m.attr("PREPARED_MARK_STEP") = kMarkStep;
}

// def_kernel<int>(m, name, build, launch) plus its prepared form prepare_<name>.
template <typename P, typename... Args, typename Launch>
void def_cpu_kernel(nb::module_& m, const char* name, P (*build)(Args...), Launch launch) {
  def_kernel<int>(m, name, build, launch);
  m.def(("prepare_" + std::string(name)).c_str(), [build, launch](int nslots, Args... args) {
    SSM_CHECK(nslots >= 0 && nslots < 0xffff, "prepare", "bad slot count ", nslots);
    return make_prepared(build(args...), nslots, launch);
  });
}

}  // namespace ssm::bind
