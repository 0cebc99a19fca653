// fastlr._C_cuda: the CUDA kernels' pybind11 module, separate from fastlr._C so the CPU
// build never needs CUDA. Like fastlr._C it takes lists of integer device addresses
// gathered and validated by the Python wrapper (fastlr/_cuda.py), plus the device
// index and the cudaStream_t (torch.cuda.current_stream().cuda_stream) as integers.
// No libtorch, no CUDA header here: csrc/cuda/launch.hpp is plain C++.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/launch.hpp"

#ifndef FASTLR_VERSION
#define FASTLR_VERSION "unknown"
#endif

namespace py = pybind11;
namespace fc = fastlr::cuda;

namespace {

// Reused buffers: after the first call a step allocates nothing here.
struct Scratch {
  std::vector<int64_t> numel;
  std::vector<char*> ptrs[fc::kMaxRoles];
  std::vector<void*> step, increment;
  std::vector<uint8_t> first;
};
thread_local Scratch scratch;

// An empty tensor may have a null address (torch gives 0 for numel 0); numel: null
// when every address must be valid.
void* address(PyObject* item, const char* name, size_t i, const int64_t* numel) {
  void* p = PyLong_AsVoidPtr(item);
  if (p == nullptr && PyErr_Occurred()) throw py::error_already_set();
  if (p == nullptr && (numel == nullptr || numel[i] != 0))
    throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is a null pointer");
  return p;
}

template <class T>
void read_addresses(const py::object& seq_obj, size_t n, std::vector<T>& out, const char* name,
                    const int64_t* numel = nullptr) {
  const py::sequence seq = seq_obj.cast<py::sequence>();
  if (py::len(seq) != n)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(n) +
                          " addresses, got " + std::to_string(py::len(seq)));
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    py::object item = seq[i];
    out[i] = static_cast<T>(address(item.ptr(), name, i, numel));
  }
}

// Fills the Lists of one call. `roles` names the address lists in role order (None:
// unused role). steps: addresses or None; first: bools or None.
fc::Lists make_lists(const py::sequence& numels,
                     std::initializer_list<std::pair<const char*, py::object>> roles,
                     const py::object& steps, const py::object& first) {
  fc::Lists l;
  const size_t n = py::len(numels);
  scratch.numel.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t v = numels[i].cast<int64_t>();
    if (v < 0) throw py::value_error("numel must be >= 0");
    scratch.numel[i] = v;
  }
  l.n = static_cast<int64_t>(n);
  l.numel = scratch.numel.data();
  int r = 0;
  for (const auto& role : roles) {
    if (!role.second.is_none()) {
      read_addresses(role.second, n, scratch.ptrs[r], role.first, scratch.numel.data());
      l.ptrs[r] = scratch.ptrs[r].data();
    }
    ++r;
  }
  if (l.ptrs[0] == nullptr || l.ptrs[1] == nullptr)
    throw py::value_error("params and grads are required");
  if (!steps.is_none()) {
    read_addresses(steps, n, scratch.step, "steps");
    l.step = scratch.step.data();
  }
  if (!first.is_none()) {
    const py::sequence seq = first.cast<py::sequence>();
    if (py::len(seq) != n) throw py::value_error("first: wrong length");
    scratch.first.resize(n);
    for (size_t i = 0; i < n; ++i) scratch.first[i] = seq[i].cast<bool>() ? 1 : 0;
    l.first = scratch.first.data();
  }
  return l;
}

template <class T>
const T* opt_ptr(uint64_t address) {
  return reinterpret_cast<const T*>(static_cast<uintptr_t>(address));
}

fc::Common make_common(int device, uint64_t stream, int step_dtype, const py::object& increment,
                       uint64_t grad_scale, uint64_t found_inf, uint64_t lr_schedule,
                       uint64_t momentum_schedule, uint64_t schedule_step) {
  if (step_dtype < 0 || step_dtype > 3) throw py::value_error("step_dtype code must be 0..3");
  fc::Common c;
  c.device = device;
  c.stream = reinterpret_cast<void*>(static_cast<uintptr_t>(stream));
  c.step_dtype = static_cast<fc::StepDType>(step_dtype);
  if (!increment.is_none()) {
    const size_t n = py::len(increment.cast<py::sequence>());
    read_addresses(increment, n, scratch.increment, "increment");
    c.increment = scratch.increment.data();
    c.n_increment = static_cast<int64_t>(n);
  }
  c.grad_scale = opt_ptr<float>(grad_scale);
  c.found_inf = opt_ptr<float>(found_inf);
  c.lr_schedule = opt_ptr<double>(lr_schedule);
  c.momentum_schedule = opt_ptr<double>(momentum_schedule);
  c.schedule_step = opt_ptr<void>(schedule_step);
  return c;
}

void check_dtype(int dtype) {
  if (dtype < 0 || dtype > 3) throw py::value_error("dtype code must be 0..3");
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() =
      "fastlr's CUDA kernels (private; use fastlr._cuda or fastlr.optim). Addresses are "
      "integers; 0 means 'none' for grad_scale, found_inf and the schedule encodings.";

#define FASTLR_COMMON_ARGS                                                                   \
  py::arg("device"), py::arg("stream"), py::arg("steps") = py::none(),                      \
      py::arg("step_dtype") = 0, py::arg("increment") = py::none(), py::arg("grad_scale") = 0, \
      py::arg("found_inf") = 0, py::arg("lr_schedule") = 0, py::arg("schedule_step") = 0

  m.def(
      "sgd",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object momentum_buffers, py::object first, double lr, double momentum,
         double dampening, bool nesterov, double weight_decay, bool maximize, int device,
         uint64_t stream, py::object steps, int step_dtype, py::object increment,
         uint64_t grad_scale, uint64_t found_inf, uint64_t lr_schedule,
         uint64_t schedule_step, uint64_t momentum_schedule) {
        check_dtype(dtype);
        const bool use_momentum = momentum != 0.0 || momentum_schedule != 0;
        fc::Lists l = make_lists(
            numel, {{"params", params}, {"grads", grads}, {"momentum_buffers", momentum_buffers}},
            steps, first);
        if (use_momentum && l.ptrs[2] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum != 0");
        fc::Common c = make_common(device, stream, step_dtype, increment, grad_scale, found_inf,
                                   lr_schedule, momentum_schedule, schedule_step);
        const fc::SgdArgs a{lr, momentum, dampening, weight_decay, nesterov, maximize, use_momentum};
        py::gil_scoped_release release;
        fc::sgd(dtype, l, c, a);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("momentum_buffers"), py::arg("first"), py::arg("lr"), py::arg("momentum"),
      py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"), py::arg("maximize"),
      FASTLR_COMMON_ARGS, py::arg("momentum_schedule") = 0);

  m.def(
      "adam",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object exp_avgs, py::object exp_avg_sqs, py::object max_exp_avg_sqs, double lr,
         double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
         bool amsgrad, bool maximize, int device, uint64_t stream, py::object steps,
         int step_dtype, py::object increment, uint64_t grad_scale, uint64_t found_inf,
         uint64_t lr_schedule, uint64_t schedule_step, uint64_t beta1_schedule) {
        check_dtype(dtype);
        fc::Lists l = make_lists(numel,
                                 {{"params", params},
                                  {"grads", grads},
                                  {"exp_avgs", exp_avgs},
                                  {"exp_avg_sqs", exp_avg_sqs},
                                  {"max_exp_avg_sqs", max_exp_avg_sqs}},
                                 steps, py::none());
        if (l.ptrs[2] == nullptr || l.ptrs[3] == nullptr)
          throw py::value_error("exp_avgs and exp_avg_sqs are required");
        if (amsgrad && l.ptrs[4] == nullptr)
          throw py::value_error("max_exp_avg_sqs are required when amsgrad=True");
        if (l.step == nullptr) throw py::value_error("steps are required");
        fc::Common c = make_common(device, stream, step_dtype, increment, grad_scale, found_inf,
                                   lr_schedule, beta1_schedule, schedule_step);
        const fc::AdamArgs a{lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
                             maximize};
        py::gil_scoped_release release;
        fc::adam(dtype, l, c, a);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("decoupled_weight_decay"), py::arg("amsgrad"), py::arg("maximize"),
      FASTLR_COMMON_ARGS, py::arg("beta1_schedule") = 0);

  m.def(
      "rmsprop",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object square_avgs, py::object grad_avgs, py::object momentum_buffers,
         py::object first, double lr, double alpha, double eps, double weight_decay,
         double momentum, bool centered, bool maximize, int device, uint64_t stream,
         py::object steps, int step_dtype, py::object increment, uint64_t grad_scale,
         uint64_t found_inf, uint64_t lr_schedule, uint64_t schedule_step,
         uint64_t momentum_schedule) {
        check_dtype(dtype);
        const bool use_momentum = momentum > 0.0 || momentum_schedule != 0;
        fc::Lists l = make_lists(numel,
                                 {{"params", params},
                                  {"grads", grads},
                                  {"square_avgs", square_avgs},
                                  {"grad_avgs", grad_avgs},
                                  {"momentum_buffers", momentum_buffers}},
                                 steps, first);
        if (l.ptrs[2] == nullptr) throw py::value_error("square_avgs are required");
        if (centered && l.ptrs[3] == nullptr)
          throw py::value_error("grad_avgs are required when centered=True");
        if (use_momentum && l.ptrs[4] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum > 0");
        fc::Common c = make_common(device, stream, step_dtype, increment, grad_scale, found_inf,
                                   lr_schedule, momentum_schedule, schedule_step);
        const fc::RmspropArgs a{lr, alpha, eps, weight_decay, momentum, centered, use_momentum,
                                maximize};
        py::gil_scoped_release release;
        fc::rmsprop(dtype, l, c, a);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("square_avgs"), py::arg("grad_avgs"), py::arg("momentum_buffers"),
      py::arg("first"), py::arg("lr"), py::arg("alpha"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("momentum"), py::arg("centered"), py::arg("maximize"),
      FASTLR_COMMON_ARGS, py::arg("momentum_schedule") = 0);

  m.def(
      "adagrad",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object state_sums, double lr, double lr_decay, double weight_decay, double eps,
         bool maximize, int device, uint64_t stream, py::object steps, int step_dtype,
         py::object increment, uint64_t grad_scale, uint64_t found_inf, uint64_t lr_schedule,
         uint64_t schedule_step) {
        check_dtype(dtype);
        fc::Lists l = make_lists(
            numel, {{"params", params}, {"grads", grads}, {"state_sums", state_sums}}, steps,
            py::none());
        if (l.ptrs[2] == nullptr) throw py::value_error("state_sums are required");
        if (l.step == nullptr) throw py::value_error("steps are required");
        fc::Common c = make_common(device, stream, step_dtype, increment, grad_scale, found_inf,
                                   lr_schedule, 0, schedule_step);
        const fc::AdagradArgs a{lr, lr_decay, weight_decay, eps, maximize};
        py::gil_scoped_release release;
        fc::adagrad(dtype, l, c, a);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("state_sums"), py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"),
      py::arg("eps"), py::arg("maximize"), FASTLR_COMMON_ARGS);
#undef FASTLR_COMMON_ARGS

  m.def(
      "copy",
      [](int device, uint64_t stream, uint64_t dst, uint64_t src, int64_t nbytes) {
        if (nbytes < 0 || nbytes % 16 != 0 || dst % 16 != 0 || src % 16 != 0)
          throw py::value_error("copy needs 16-byte aligned pointers and a multiple of 16 bytes");
        py::gil_scoped_release release;
        fc::copy(device, reinterpret_cast<void*>(static_cast<uintptr_t>(stream)),
                 reinterpret_cast<void*>(static_cast<uintptr_t>(dst)),
                 reinterpret_cast<const void*>(static_cast<uintptr_t>(src)), nbytes);
      },
      py::arg("device"), py::arg("stream"), py::arg("dst"), py::arg("src"), py::arg("nbytes"));

  m.def(
      "schedule_values",
      [](int device, uint64_t stream, uint64_t enc, uint64_t t, uint64_t out, int64_t n) {
        py::gil_scoped_release release;
        fc::schedule_values(device, reinterpret_cast<void*>(static_cast<uintptr_t>(stream)),
                            opt_ptr<double>(enc), opt_ptr<int64_t>(t),
                            reinterpret_cast<double*>(static_cast<uintptr_t>(out)), n);
      },
      py::arg("device"), py::arg("stream"), py::arg("enc"), py::arg("t"), py::arg("out"),
      py::arg("n"));

  m.def("multiprocessor_count", &fc::multiprocessor_count, py::arg("device"));
  m.attr("runtime_version") = fc::runtime_version();
  m.attr("max_tensors_per_launch") = fc::max_tensors_per_launch(fc::kMaxRoles);
  m.attr("version") = FASTLR_VERSION;
#if defined(FASTLR_CUDA_ARCHS)
  m.attr("archs") = FASTLR_CUDA_ARCHS;
#else
  m.attr("archs") = "";
#endif
}
