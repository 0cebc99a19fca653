// Helpers shared by the binding files (bindings.cpp, bindings_schedulefree.cpp): turn the
// Python wrapper's lists of raw data addresses into a TensorList, read the precision
// options, evaluate schedules.
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
#include "kernels.hpp"

namespace fastlr {
namespace bindings {

namespace py = pybind11;

using Schedule = std::optional<py::array_t<double, py::array::c_style | py::array::forcecast>>;

// Reused per-thread buffers: after the first call a step allocates nothing here.
struct Scratch {
  std::vector<int64_t> numel, offsets, tensor_ids;
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

// PySequence_Fast_GET_ITEM needs a list or tuple.
inline py::object as_fast_sequence(py::object seq) {
  if (!seq.is_none() && !py::isinstance<py::list>(seq) && !py::isinstance<py::tuple>(seq))
    seq = py::list(seq);
  return seq;
}

// Builds the TensorList for one call. `roles` names the pointer lists in order: params,
// grads, then the states.
inline TensorList make_list(const fastlr::Precision& prec, const py::sequence& numels,
                     std::initializer_list<std::pair<const char*, py::object>> roles) {
  TensorList list;
  read_numels(numels, scratch.numel);
  list.size = static_cast<int64_t>(scratch.numel.size());
  list.numel = scratch.numel.data();
  list.elem_size[0] = fastlr::dtype_size(prec.param);
  list.elem_size[1] = fastlr::dtype_size(prec.grad);
  for (int r = 2; r < fastlr::kMasterRole; ++r) list.elem_size[r] = fastlr::dtype_size(prec.state);
  list.elem_size[fastlr::kMasterRole] = 4;
  int r = 0;
  for (const auto& role : roles) read_role(list, r++, as_fast_sequence(role.second), role.first);
  list.roles = r;
  if (list.base[0] == nullptr || list.base[1] == nullptr)
    throw py::value_error("params and grads are required");
  scratch.offsets.resize(static_cast<size_t>(list.size) + 1);
  return list;
}

// The keyword-only precision options shared by every kernel (see _C.pyi).
struct PrecisionOptions {
  py::object grad_dtype, state_dtype, masters, tensor_ids;
  bool stochastic_rounding;
  py::object seed;
};

#define FASTLR_PRECISION_ARGS                                                         \
  py::kw_only(), py::arg("grad_dtype") = py::none(), py::arg("state_dtype") = py::none(), \
      py::arg("masters") = py::none(), py::arg("stochastic_rounding") = false,         \
      py::arg("seed") = 0, py::arg("tensor_ids") = py::none()

inline fastlr::Precision make_precision(int dtype_code, const PrecisionOptions& o) {
  fastlr::Precision prec;
  prec.param = to_dtype(dtype_code);
  prec.grad = o.grad_dtype.is_none() ? prec.param : to_dtype(o.grad_dtype.cast<int>());
  prec.master = !o.masters.is_none();
  prec.state = !o.state_dtype.is_none() ? to_dtype(o.state_dtype.cast<int>())
               : prec.master           ? DType::float32
                                       : prec.param;
  prec.stochastic = o.stochastic_rounding;
  const std::string why = fastlr::unsupported_precision(prec);
  if (!why.empty()) throw py::value_error(why);
  return prec;
}

// Adds the master role, the tensor ids and the rounding key (t = completed updates).
inline void add_precision(TensorList& list, const fastlr::Precision& prec, const PrecisionOptions& o,
                   int64_t t) {
  if (prec.master) read_role(list, fastlr::kMasterRole, as_fast_sequence(o.masters), "masters");
  if (!o.tensor_ids.is_none()) {
    const py::sequence ids = o.tensor_ids.cast<py::sequence>();
    if (py::len(ids) != static_cast<size_t>(list.size))
      throw py::value_error("tensor_ids: expected " + std::to_string(list.size) + " ids, got " +
                            std::to_string(py::len(ids)));
    scratch.tensor_ids.resize(static_cast<size_t>(std::max<int64_t>(list.size, 1)));
    for (int64_t i = 0; i < list.size; ++i) scratch.tensor_ids[static_cast<size_t>(i)] = ids[i].cast<int64_t>();
    list.tensor_ids = scratch.tensor_ids.data();
  }
  // seed: any integer, taken modulo 2**64 (so negative seeds work too)
  const uint64_t seed = PyLong_AsUnsignedLongLongMask(o.seed.ptr());
  if (PyErr_Occurred()) throw py::error_already_set();
  list.rounding_key = fastlr::rounding_call_key(seed, t);
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
