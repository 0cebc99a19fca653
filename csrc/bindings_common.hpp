// Helpers shared by the binding files (bindings.cpp, bindings_schedulefree.cpp): turn the
// Python wrapper's lists of raw data addresses into a TensorList, evaluate schedules.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"
#include "fastlr/schedule.hpp"

namespace fastlr {
namespace bindings {

namespace py = pybind11;


using Schedule = std::optional<py::array_t<double, py::array::c_style | py::array::forcecast>>;

// Reused per-thread buffers: after the first call a step allocates nothing here.
struct Scratch {
  std::vector<int64_t> numel, offsets;
  std::vector<char*> ptrs[fastlr::kMaxRoles];
};
inline thread_local Scratch scratch;

inline DType to_dtype(int code) {
  if (code < 0 || code > 3) throw py::value_error("dtype code must be 0..3");
  return static_cast<DType>(code);
}

inline void read_numels(const py::sequence& numels, std::vector<int64_t>& out) {
  const py::ssize_t n = py::len(numels);
  out.resize(static_cast<size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    const int64_t v = numels[i].cast<int64_t>();
    if (v < 0) throw py::value_error("numel must be >= 0");
    out[static_cast<size_t>(i)] = v;
  }
}

// Fills role r of `list` from a sequence of integer addresses (or None).
inline void read_role(TensorList& list, int r, const py::object& addresses, const char* name) {
  std::vector<char*>& out = scratch.ptrs[r];
  if (addresses.is_none()) {
    list.base[r] = nullptr;
    return;
  }
  const py::sequence seq = addresses.cast<py::sequence>();
  if (py::len(seq) != static_cast<size_t>(list.size))
    throw py::value_error(std::string(name) + ": expected " + std::to_string(list.size) +
                          " addresses, got " + std::to_string(py::len(seq)));
  // At least one slot: a given list, even an empty one, needs a non-null base (null
  // means "not given"), and an empty vector's data() may be null.
  out.resize(static_cast<size_t>(std::max<int64_t>(list.size, 1)));
  for (int64_t i = 0; i < list.size; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq.ptr(), i);
    void* p = PyLong_AsVoidPtr(item);
    if (p == nullptr && PyErr_Occurred()) throw py::error_already_set();
    if (p == nullptr && list.numel[i] > 0)
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is a null pointer");
    out[static_cast<size_t>(i)] = static_cast<char*>(p);
  }
  list.base[r] = out.data();
}

// Builds the TensorList for one call. `roles` names the pointer lists in order.
inline TensorList make_list(int dtype_code, const py::sequence& numels,
                     std::initializer_list<std::pair<const char*, py::object>> roles) {
  TensorList list;
  read_numels(numels, scratch.numel);
  list.size = static_cast<int64_t>(scratch.numel.size());
  list.numel = scratch.numel.data();
  list.elem_size = fastlr::dtype_size(to_dtype(dtype_code));
  int r = 0;
  for (const auto& role : roles) {
    // PySequence_Fast_GET_ITEM needs a list or tuple.
    py::object seq = role.second;
    if (!seq.is_none() && !py::isinstance<py::list>(seq) && !py::isinstance<py::tuple>(seq))
      seq = py::list(seq);
    read_role(list, r++, seq, role.first);
  }
  list.roles = r;
  if (list.base[0] == nullptr || list.base[1] == nullptr)
    throw py::value_error("params and grads are required");
  scratch.offsets.resize(static_cast<size_t>(list.size) + 1);
  return list;
}

inline double eval(const Schedule& schedule, double value, int64_t t) {
  if (!schedule) return value;
  if (schedule->ndim() != 1 || schedule->size() < 2)
    throw py::value_error("schedule encoding must be a 1-d float64 array");
  return value * fastlr::schedule_at(schedule->data(), t);
}

inline void check_t(int64_t t) {
  if (t < 0) throw py::value_error("t (completed updates) must be >= 0");
}

// t = step - 1 for a 1-based step that arrives as a double (torch keeps it in a float
// tensor). Past 2**53 a double is no exact integer, and past 2**63 the conversion to
// int64 would be undefined behaviour (UBSan's float-cast-overflow).
inline int64_t completed_updates(double step) {
  if (!(step >= 1.0 && step <= 9007199254740992.0))
    throw py::value_error("step must be in [1, 2**53]");
  return static_cast<int64_t>(step) - 1;
}

}  // namespace bindings
}  // namespace fastlr
