// fastlr._C: the only file that includes pybind11. It converts the Python wrapper's
// lists of raw data pointers (gathered and validated in fastlr/_kernels.py or
// fastlr/optim), evaluates the schedules once, releases the GIL and calls the core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings_common.hpp"
#include "fastlr/schedule.hpp"
#include "kernels.hpp"
#include "quant8_kernels.hpp"
#include "fastlr/quant8.hpp"
#include "roofline.hpp"

#ifndef FASTLR_VERSION
#define FASTLR_VERSION "unknown"
#endif

namespace py = pybind11;
using fastlr::DType;
using fastlr::TensorList;

using namespace fastlr::bindings;

void bind_schedulefree(py::module_& m);  // bindings_schedulefree.cpp

namespace {

// Addresses of one role for the 8-bit kernels (None: role absent).
void read_addresses(const py::object& addresses, int64_t n, std::vector<char*>& out, const char* name,
                    const std::vector<int64_t>& numel) {
  const py::sequence seq = addresses.cast<py::sequence>();
  if (static_cast<int64_t>(py::len(seq)) != n)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " addresses, got " +
                          std::to_string(py::len(seq)));
  out.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (int64_t i = 0; i < n; ++i) {
    void* p = PyLong_AsVoidPtr(seq[static_cast<size_t>(i)].ptr());
    if (p == nullptr && PyErr_Occurred()) throw py::error_already_set();
    if (p == nullptr && numel[static_cast<size_t>(i)] > 0)
      throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] is a null pointer");
    out[static_cast<size_t>(i)] = static_cast<char*>(p);
  }
}

struct Quant8Scratch {
  std::vector<int64_t> numel, offsets, tensor_ids;
  std::vector<char*> ptrs[9];  // params, grads, 3 states' codes, 3 states' scales, masters
};
thread_local Quant8Scratch q8scratch;

// The list of one 8-bit call: numels, params, grads and the precision keywords (masters,
// tensor_ids); the states are added by add_q8_state.
fastlr::Quant8List q8_list(const py::sequence& numel, const py::object& params, const py::object& grads,
                           int64_t block, const py::object& masters, const py::object& tensor_ids) {
  if (block < 1 || block > 4096) throw py::value_error("block_size must be in [1, 4096]");
  auto& sc = q8scratch;
  read_numels(numel, sc.numel);
  const int64_t n = static_cast<int64_t>(sc.numel.size());
  fastlr::Quant8List list;
  list.size = n;
  list.numel = sc.numel.data();
  list.block = block;
  read_addresses(params, n, sc.ptrs[0], "params", sc.numel);
  read_addresses(grads, n, sc.ptrs[1], "grads", sc.numel);
  list.param = sc.ptrs[0].data();
  list.grad = sc.ptrs[1].data();
  if (!masters.is_none()) {
    read_addresses(masters, n, sc.ptrs[8], "masters", sc.numel);
    list.master = sc.ptrs[8].data();
  }
  if (!tensor_ids.is_none()) {
    const py::sequence ids = tensor_ids.cast<py::sequence>();
    if (static_cast<int64_t>(py::len(ids)) != n)
      throw py::value_error("tensor_ids: expected " + std::to_string(n) + " ids, got " + std::to_string(py::len(ids)));
    sc.tensor_ids.resize(static_cast<size_t>(std::max<int64_t>(n, 1)));
    for (int64_t i = 0; i < n; ++i) sc.tensor_ids[static_cast<size_t>(i)] = ids[static_cast<size_t>(i)].cast<int64_t>();
    list.tensor_ids = sc.tensor_ids.data();
  }
  sc.offsets.resize(static_cast<size_t>(n) + 1);
  return list;
}

// State role r: a (codes addresses, scales addresses) pair, or None (role absent).
void add_q8_state(fastlr::Quant8List& list, int r, const py::object& pair, const std::string& name) {
  if (pair.is_none()) return;
  const py::sequence seq = pair.cast<py::sequence>();
  if (py::len(seq) != 2 || py::isinstance<py::str>(pair))
    throw py::value_error(name + " must be a (codes addresses, scales addresses) pair");
  auto& sc = q8scratch;
  read_addresses(seq[0], list.size, sc.ptrs[2 + r], (name + "[0] (codes)").c_str(), sc.numel);
  read_addresses(seq[1], list.size, sc.ptrs[5 + r], (name + "[1] (scales)").c_str(), sc.numel);
  list.state[r] = sc.ptrs[2 + r].data();
  list.scale[r] = reinterpret_cast<float* const*>(sc.ptrs[5 + r].data());
}

fastlr::Quant8Precision q8_precision(int dtype, const py::object& grad_dtype, const py::object& masters,
                                     bool stochastic_rounding) {
  fastlr::Quant8Precision p;
  p.param = to_dtype(dtype);
  p.grad = grad_dtype.is_none() ? p.param : to_dtype(grad_dtype.cast<int>());
  p.master = !masters.is_none();
  // a param with a master is its master rounded to nearest; float32 params have no 16-bit store
  p.stochastic = stochastic_rounding && !p.master && p.param != DType::float32;
  const std::string why = fastlr::unsupported_quant8_precision(p);
  if (!why.empty()) throw py::value_error(why);
  return p;
}

uint64_t q8_seed(const py::object& seed) {
  // any integer, taken modulo 2**64 (as the other kernels)
  const uint64_t s = PyLong_AsUnsignedLongLongMask(seed.ptr());
  if (PyErr_Occurred()) throw py::error_already_set();
  return s;
}

#define FASTLR_Q8_ARGS                                                                      \
  py::kw_only(), py::arg("block_size") = 256, py::arg("grad_dtype") = py::none(),           \
      py::arg("masters") = py::none(), py::arg("stochastic_rounding") = false, py::arg("seed") = 0, \
      py::arg("tensor_ids") = py::none()

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastlr's C++ kernels (private; use the fastlr package)";
  fastlr::init_cpu_level_from_env();

  // Every kernel: when a schedule encoding is given, the value used is
  // value * schedule(t) (so `lr` then acts as a scale, 1.0 by default), where t is
  // the number of completed updates. Returns the (lr, momentum/beta1) used.
  m.def(
      "sgd",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object momentum_buffers, double lr, Schedule lr_schedule, int64_t t,
         double momentum, Schedule momentum_schedule, double dampening, bool nesterov,
         double weight_decay, bool maximize, bool first_step, double grad_scale,
         py::object grad_dtype, py::object state_dtype, py::object masters,
         bool stochastic_rounding, py::object seed, py::object tensor_ids) {
        check_t(t);
        const PrecisionOptions po{grad_dtype, state_dtype, masters, tensor_ids, stochastic_rounding, seed};
        const fastlr::Precision prec = make_precision(dtype, po);
        TensorList list = make_list(prec, numel, {{"params", params}, {"grads", grads},
                                                  {"momentum_buffers", momentum_buffers}});
        add_precision(list, prec, po, t);
        fastlr::SgdArgs a{eval(lr_schedule, lr, t), eval(momentum_schedule, momentum, t),
                          dampening, weight_decay, (maximize ? -1.0 : 1.0) / grad_scale,
                          nesterov, first_step};
        if (a.momentum != 0.0 && list.base[2] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum != 0");
        {
          py::gil_scoped_release release;
          fastlr::sgd(prec, list, scratch.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.momentum);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("momentum_buffers"), py::arg("lr"), py::arg("lr_schedule"), py::arg("t"),
      py::arg("momentum"), py::arg("momentum_schedule"), py::arg("dampening"),
      py::arg("nesterov"), py::arg("weight_decay"), py::arg("maximize"), py::arg("first_step"),
      py::arg("grad_scale") = 1.0, FASTLR_PRECISION_ARGS);

  m.def(
      "adam",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object exp_avgs, py::object exp_avg_sqs, py::object max_exp_avg_sqs, double step,
         double lr, Schedule lr_schedule, double beta1, Schedule beta1_schedule, double beta2,
         double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad,
         bool maximize, double grad_scale, py::object grad_dtype, py::object state_dtype,
         py::object masters, bool stochastic_rounding, py::object seed, py::object tensor_ids) {
        const int64_t t = completed_updates(step);
        const PrecisionOptions po{grad_dtype, state_dtype, masters, tensor_ids, stochastic_rounding, seed};
        const fastlr::Precision prec = make_precision(dtype, po);
        TensorList list = make_list(prec, numel,
                                    {{"params", params}, {"grads", grads}, {"exp_avgs", exp_avgs},
                                     {"exp_avg_sqs", exp_avg_sqs},
                                     {"max_exp_avg_sqs", max_exp_avg_sqs}});
        add_precision(list, prec, po, t);
        if (list.base[2] == nullptr || list.base[3] == nullptr)
          throw py::value_error("exp_avgs and exp_avg_sqs are required");
        if (amsgrad && list.base[4] == nullptr)
          throw py::value_error("max_exp_avg_sqs are required when amsgrad=True");
        fastlr::AdamArgs a{eval(lr_schedule, lr, t), eval(beta1_schedule, beta1, t), beta2, eps,
                           weight_decay, (maximize ? -1.0 : 1.0) / grad_scale, step,
                           decoupled_weight_decay, amsgrad};
        {
          py::gil_scoped_release release;
          fastlr::adam(prec, list, scratch.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.beta1);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("step"),
      py::arg("lr"), py::arg("lr_schedule"), py::arg("beta1"), py::arg("beta1_schedule"),
      py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
      py::arg("decoupled_weight_decay"), py::arg("amsgrad"), py::arg("maximize"),
      py::arg("grad_scale") = 1.0, FASTLR_PRECISION_ARGS);

  m.def(
      "rmsprop",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object square_avgs, py::object grad_avgs, py::object momentum_buffers, double lr,
         Schedule lr_schedule, int64_t t, double alpha, double eps, double weight_decay,
         double momentum, Schedule momentum_schedule, bool centered, bool use_momentum,
         bool maximize, bool first_step, double grad_scale, py::object grad_dtype,
         py::object state_dtype, py::object masters, bool stochastic_rounding, py::object seed,
         py::object tensor_ids) {
        check_t(t);
        const PrecisionOptions po{grad_dtype, state_dtype, masters, tensor_ids, stochastic_rounding, seed};
        const fastlr::Precision prec = make_precision(dtype, po);
        TensorList list =
            make_list(prec, numel,
                      {{"params", params}, {"grads", grads}, {"square_avgs", square_avgs},
                       {"grad_avgs", grad_avgs}, {"momentum_buffers", momentum_buffers}});
        add_precision(list, prec, po, t);
        if (list.base[2] == nullptr) throw py::value_error("square_avgs are required");
        if (centered && list.base[3] == nullptr)
          throw py::value_error("grad_avgs are required when centered=True");
        if (use_momentum && list.base[4] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum > 0");
        // torch tests `momentum > 0` at every step: a momentum schedule that reaches 0
        // leaves the buffers alone (and a stale inf/NaN buffer out of the update).
        const double momentum_used = eval(momentum_schedule, momentum, t);
        fastlr::RmspropArgs a{eval(lr_schedule, lr, t),
                              alpha,
                              eps,
                              weight_decay,
                              momentum_used,
                              (maximize ? -1.0 : 1.0) / grad_scale,
                              centered,
                              use_momentum && momentum_used > 0.0,
                              first_step};
        {
          py::gil_scoped_release release;
          fastlr::rmsprop(prec, list, scratch.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.momentum);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("square_avgs"), py::arg("grad_avgs"), py::arg("momentum_buffers"), py::arg("lr"),
      py::arg("lr_schedule"), py::arg("t"), py::arg("alpha"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("momentum"), py::arg("momentum_schedule"),
      py::arg("centered"), py::arg("use_momentum"), py::arg("maximize"), py::arg("first_step"),
      py::arg("grad_scale") = 1.0, FASTLR_PRECISION_ARGS);

  m.def(
      "adagrad",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object state_sums, double step, double lr, Schedule lr_schedule, double lr_decay,
         double weight_decay, double eps, bool maximize, double grad_scale,
         py::object grad_dtype, py::object state_dtype, py::object masters,
         bool stochastic_rounding, py::object seed, py::object tensor_ids) {
        const int64_t t = completed_updates(step);
        const PrecisionOptions po{grad_dtype, state_dtype, masters, tensor_ids, stochastic_rounding, seed};
        const fastlr::Precision prec = make_precision(dtype, po);
        TensorList list = make_list(prec, numel, {{"params", params}, {"grads", grads},
                                                  {"state_sums", state_sums}});
        add_precision(list, prec, po, t);
        if (list.base[2] == nullptr) throw py::value_error("state_sums are required");
        fastlr::AdagradArgs a{eval(lr_schedule, lr, t), lr_decay, weight_decay, eps,
                              (maximize ? -1.0 : 1.0) / grad_scale, step};
        {
          py::gil_scoped_release release;
          fastlr::adagrad(prec, list, scratch.offsets.data(), a);
        }
        return a.lr;
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("state_sums"), py::arg("step"), py::arg("lr"), py::arg("lr_schedule"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("grad_scale") = 1.0, FASTLR_PRECISION_ARGS);

  // Block-wise 8-bit Adam/AdamW (quant8_kernels.hpp). store: 0 float32, 1 bfloat16,
  // 2 bfloat16 with stochastic rounding, 3 float16; flavour: 0 torchao, 1 fastlr.
  // States: uint8 codes plus float32 block scales when q8, else dense (the param's type).
  m.def(
      "adam8",
      [](int store, int64_t block, bool q8, int flavour, const py::sequence& numel, py::object params,
         py::object grads, py::object exp_avgs, py::object exp_avg_scales, py::object exp_avg_sqs,
         py::object exp_avg_sq_scales, py::object max_exp_avg_sqs, py::object max_exp_avg_sq_scales,
         double step, double lr, Schedule lr_schedule, double beta1, Schedule beta1_schedule, double beta2,
         double eps, double weight_decay, bool decoupled_weight_decay, bool amsgrad, uint64_t seed,
         double grad_scale, py::object masters, py::object grad_dtype, bool maximize, py::object tensor_ids) {
        const int64_t t = completed_updates(step);
        if (store < 0 || store > 3) throw py::value_error("store must be 0..3");
        if (flavour < 0 || flavour > 1) throw py::value_error("flavour must be 0 or 1");
        const DType param = store == 0 ? DType::float32 : store == 3 ? DType::float16 : DType::bfloat16;
        const bool master = !masters.is_none();
        const DType grad = grad_dtype.is_none() ? param : to_dtype(grad_dtype.cast<int>());
        if ((master || grad != param) && (flavour != 1 || !q8))
          throw py::value_error("masters and grad_dtype need the fastlr flavour (flavour=1, q8=True)");
        if (master || grad != param) q8_precision(static_cast<int>(param), grad_dtype, masters, false);
        fastlr::Quant8List list = q8_list(numel, params, grads, block, masters, tensor_ids);
        list.q8 = q8;
        const py::object states[3] = {exp_avgs, exp_avg_sqs, max_exp_avg_sqs};
        const py::object scales[3] = {exp_avg_scales, exp_avg_sq_scales, max_exp_avg_sq_scales};
        const char* names[3] = {"exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"};
        auto& sc = q8scratch;
        for (int r = 0; r < 3; ++r) {
          if (r == 2 && !amsgrad) break;
          if (states[r].is_none()) throw py::value_error(std::string(names[r]) + " are required");
          read_addresses(states[r], list.size, sc.ptrs[2 + r], names[r], sc.numel);
          list.state[r] = sc.ptrs[2 + r].data();
          if (q8) {
            if (scales[r].is_none()) throw py::value_error(std::string(names[r]) + ": scales are required");
            read_addresses(scales[r], list.size, sc.ptrs[5 + r], "scales", sc.numel);
            list.scale[r] = reinterpret_cast<float* const*>(sc.ptrs[5 + r].data());
          }
        }
        fastlr::Adam8Args a{eval(lr_schedule, lr, t), eval(beta1_schedule, beta1, t), beta2, eps, weight_decay,
                            (maximize ? -1.0 : 1.0) / grad_scale, step, decoupled_weight_decay, amsgrad,
                            static_cast<fastlr::Quant8Flavour>(flavour), static_cast<fastlr::ParamStore>(store),
                            seed, master, grad};
        {
          py::gil_scoped_release release;
          fastlr::adam8(list, sc.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.beta1);
      },
      py::arg("store"), py::arg("block"), py::arg("q8"), py::arg("flavour"), py::arg("numel"), py::arg("params"),
      py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_scales"), py::arg("exp_avg_sqs"),
      py::arg("exp_avg_sq_scales"), py::arg("max_exp_avg_sqs"), py::arg("max_exp_avg_sq_scales"),
      py::arg("step"), py::arg("lr"), py::arg("lr_schedule"), py::arg("beta1"), py::arg("beta1_schedule"),
      py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled_weight_decay"),
      py::arg("amsgrad"), py::arg("seed") = 0, py::arg("grad_scale") = 1.0, py::kw_only(),
      py::arg("masters") = py::none(), py::arg("grad_dtype") = py::none(), py::arg("maximize") = false,
      py::arg("tensor_ids") = py::none());

  // Block-wise 8-bit SGD/RMSprop/Adagrad (fastlr encoding, quant8_kernels.hpp): the
  // arguments of sgd/rmsprop/adagrad with each state a (codes, scales) pair of address
  // lists, and the keywords of FASTLR_Q8_ARGS (see _C.pyi).
  m.def(
      "sgd8",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads, py::object momentum_buffers,
         double lr, Schedule lr_schedule, int64_t t, double momentum, Schedule momentum_schedule,
         double dampening, bool nesterov, double weight_decay, bool maximize, bool first_step, double grad_scale,
         int64_t block_size, py::object grad_dtype, py::object masters, bool stochastic_rounding, py::object seed,
         py::object tensor_ids) {
        check_t(t);
        const fastlr::Quant8Precision prec = q8_precision(dtype, grad_dtype, masters, stochastic_rounding);
        fastlr::Quant8List list = q8_list(numel, params, grads, block_size, masters, tensor_ids);
        add_q8_state(list, 0, momentum_buffers, "momentum_buffers");
        fastlr::Sgd8Args a{eval(lr_schedule, lr, t), eval(momentum_schedule, momentum, t), dampening,
                           weight_decay, (maximize ? -1.0 : 1.0) / grad_scale, nesterov, first_step, false,
                           t + 1, q8_seed(seed)};
        a.use_momentum = a.momentum != 0.0;
        if (a.use_momentum && list.state[0] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum != 0");
        {
          py::gil_scoped_release release;
          fastlr::sgd8(prec, list, q8scratch.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.momentum);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"),
      py::arg("lr"), py::arg("lr_schedule"), py::arg("t"), py::arg("momentum"), py::arg("momentum_schedule"),
      py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"), py::arg("maximize"),
      py::arg("first_step"), py::arg("grad_scale") = 1.0, FASTLR_Q8_ARGS);

  m.def(
      "rmsprop8",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads, py::object square_avgs,
         py::object grad_avgs, py::object momentum_buffers, double lr, Schedule lr_schedule, int64_t t,
         double alpha, double eps, double weight_decay, double momentum, Schedule momentum_schedule,
         bool centered, bool use_momentum, bool maximize, bool first_step, double grad_scale, int64_t block_size,
         py::object grad_dtype, py::object masters, bool stochastic_rounding, py::object seed,
         py::object tensor_ids) {
        check_t(t);
        const fastlr::Quant8Precision prec = q8_precision(dtype, grad_dtype, masters, stochastic_rounding);
        fastlr::Quant8List list = q8_list(numel, params, grads, block_size, masters, tensor_ids);
        add_q8_state(list, 0, square_avgs, "square_avgs");
        add_q8_state(list, 1, grad_avgs, "grad_avgs");
        add_q8_state(list, 2, momentum_buffers, "momentum_buffers");
        if (list.state[0] == nullptr) throw py::value_error("square_avgs are required");
        if (centered && list.state[1] == nullptr) throw py::value_error("grad_avgs are required when centered=True");
        if (use_momentum && list.state[2] == nullptr)
          throw py::value_error("momentum_buffers are required when momentum > 0");
        // as rmsprop: a momentum schedule at 0 leaves the buffers alone
        const double momentum_used = eval(momentum_schedule, momentum, t);
        fastlr::Rmsprop8Args a{eval(lr_schedule, lr, t), alpha, eps, weight_decay, momentum_used,
                               (maximize ? -1.0 : 1.0) / grad_scale, centered,
                               use_momentum && momentum_used > 0.0, first_step, t + 1, q8_seed(seed)};
        {
          py::gil_scoped_release release;
          fastlr::rmsprop8(prec, list, q8scratch.offsets.data(), a);
        }
        return py::make_tuple(a.lr, a.momentum);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"), py::arg("square_avgs"),
      py::arg("grad_avgs"), py::arg("momentum_buffers"), py::arg("lr"), py::arg("lr_schedule"), py::arg("t"),
      py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
      py::arg("momentum_schedule"), py::arg("centered"), py::arg("use_momentum"), py::arg("maximize"),
      py::arg("first_step"), py::arg("grad_scale") = 1.0, FASTLR_Q8_ARGS);

  m.def(
      "adagrad8",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads, py::object state_sums,
         double step, double lr, Schedule lr_schedule, double lr_decay, double weight_decay, double eps,
         bool maximize, double grad_scale, int64_t block_size, py::object grad_dtype, py::object masters,
         bool stochastic_rounding, py::object seed, py::object tensor_ids) {
        const int64_t t = completed_updates(step);
        const fastlr::Quant8Precision prec = q8_precision(dtype, grad_dtype, masters, stochastic_rounding);
        fastlr::Quant8List list = q8_list(numel, params, grads, block_size, masters, tensor_ids);
        add_q8_state(list, 0, state_sums, "state_sums");
        if (list.state[0] == nullptr) throw py::value_error("state_sums are required");
        fastlr::Adagrad8Args a{eval(lr_schedule, lr, t), lr_decay, weight_decay, eps,
                               (maximize ? -1.0 : 1.0) / grad_scale, t + 1, q8_seed(seed)};
        {
          py::gil_scoped_release release;
          fastlr::adagrad8(prec, list, q8scratch.offsets.data(), a);
        }
        return a.lr;
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"), py::arg("state_sums"),
      py::arg("step"), py::arg("lr"), py::arg("lr_schedule"), py::arg("lr_decay"), py::arg("weight_decay"),
      py::arg("eps"), py::arg("maximize"), py::arg("grad_scale") = 1.0, FASTLR_Q8_ARGS);

  // The dynamic maps (signed for exp_avg, unsigned for exp_avg_sq) and the nearest-code
  // search: level -1 is the reference binary search, 0..2 the kernels' search per level.
  m.def("quant8_map", [](bool signed_map) {
    py::array_t<float> out(256);
    std::memcpy(out.mutable_data(), signed_map ? fastlr::quant8::kSignedMap : fastlr::quant8::kUnsignedMap,
                256 * sizeof(float));
    return out;
  }, py::arg("signed"));
  m.def(
      "quant8_codes",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> x, bool signed_map, int level) {
        py::array_t<uint8_t> out(x.request().shape);
        const float* xp = x.data();
        uint8_t* op = out.mutable_data();
        const int64_t n = x.size();
        try {
          py::gil_scoped_release release;
          fastlr::quant8_codes(xp, n, signed_map, level, op);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
        return out;
      },
      py::arg("x"), py::arg("signed"), py::arg("level"));
  m.def(
      "quant8_check",
      [](bool signed_map, int level, uint64_t lo, uint64_t hi) {
        try {
          py::gil_scoped_release release;
          return fastlr::quant8_check(signed_map, level, lo, hi);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("signed"), py::arg("level"), py::arg("lo"), py::arg("hi"));

  m.def(
      "schedule_values",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> enc,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> t) {
        if (enc.ndim() != 1 || enc.size() < 2)
          throw py::value_error("schedule encoding must be a 1-d float64 array");
        py::array_t<double> out(t.request().shape);
        const double* e = enc.data();
        const int64_t* ts = t.data();
        double* o = out.mutable_data();
        const py::ssize_t n = t.size();
        for (py::ssize_t i = 0; i < n; ++i)
          if (ts[i] < 0) throw py::value_error("t must be >= 0");
        {
          py::gil_scoped_release release;
          for (py::ssize_t i = 0; i < n; ++i) o[i] = fastlr::schedule_at(e, ts[i]);
        }
        return out;
      },
      py::arg("enc"), py::arg("t"));

  m.def(
      "schedule_at",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> enc, int64_t t) {
        if (enc.ndim() != 1 || enc.size() < 2)
          throw py::value_error("schedule encoding must be a 1-d float64 array");
        check_t(t);
        return fastlr::schedule_at(enc.data(), t);
      },
      py::arg("enc"), py::arg("t"));

  // Data addresses of a list of NumPy arrays, for the NumPy face's validation and calls:
  // __array_interface__ builds a dict per array (~1 us); this reads the array struct.
  m.def(
      "data_ptrs",
      [](const py::list& arrays) {
        py::list out(arrays.size());
        for (size_t i = 0; i < arrays.size(); ++i) {
          py::handle a = arrays[i];
          if (!py::isinstance<py::array>(a))
            throw py::type_error("data_ptrs: item " + std::to_string(i) + " is not a numpy.ndarray");
          const void* p = py::reinterpret_borrow<py::array>(a).data();
          out[i] = py::reinterpret_steal<py::object>(PyLong_FromVoidPtr(const_cast<void*>(p)));
        }
        return out;
      },
      py::arg("arrays"));
  m.def("get_num_threads", &fastlr::get_num_threads);
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw py::value_error("num_threads must be a positive integer");
        fastlr::set_num_threads(n);
      },
      py::arg("n"));
  m.def("cpu_level", [] { return std::string(fastlr::cpu_level_name(fastlr::cpu_level())); });
  m.def("detected_cpu_level",
        [] { return std::string(fastlr::cpu_level_name(fastlr::detected_cpu_level())); });
  m.def(
      "set_cpu_level",
      [](const std::string& name) {
        try {
          fastlr::set_cpu_level(fastlr::parse_level(name.c_str()));
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("name"));
  // Memory-only roofline kernel for `fastlr bench` (roofline.hpp): reads params, grads
  // and 0-3 state lists and writes params and states back unchanged.
  m.def(
      "roofline",
      [](int dtype, const py::sequence& numel, py::object params, py::object grads,
         const py::sequence& states) {
        const py::ssize_t k = py::len(states);
        if (k > 3) throw py::value_error("roofline: at most 3 state lists");
        py::object s[3] = {py::none(), py::none(), py::none()};
        for (py::ssize_t j = 0; j < k; ++j) s[j] = states[j];
        TensorList list = make_list(fastlr::same_precision(to_dtype(dtype)), numel,
                                    {{"params", params}, {"grads", grads}, {"states[0]", s[0]},
                                     {"states[1]", s[1]}, {"states[2]", s[2]}});
        list.roles = 2 + static_cast<int>(k);
        py::gil_scoped_release release;
        fastlr::roofline(to_dtype(dtype), list, scratch.offsets.data());
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("states"));
  bind_schedulefree(m);
  m.attr("openmp") = fastlr::openmp_enabled();
  m.attr("version") = FASTLR_VERSION;
#if defined(__clang__)
  m.attr("compiler") = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  m.attr("compiler") = std::string("gcc ") + __VERSION__;
#else
  m.attr("compiler") = "unknown";
#endif
}
