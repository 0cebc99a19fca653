// fastlr._C's schedule-free functions (the kernels of csrc/schedulefree.cpp): the group's
// bookkeeping is computed here once per call, then one pass updates every tensor.
#include <pybind11/pybind11.h>

#include "bindings_common.hpp"
#include "schedulefree_kernels.hpp"

namespace py = pybind11;
using namespace fastlr::bindings;

void bind_schedulefree(py::module_& m) {
  // Returns (scheduled_lr, lr_max, weight_sum, ckp1, y_coef, bias_correction2, adaptive):
  // the group's values after this step, then the scalars of the update. An empty list
  // only computes them (a group whose params have no grads, the torch fallback path).
  m.def(
      "schedulefree_step",
      [](int kind, int dtype, const py::sequence& numel, py::object params, py::object grads,
         py::object zs, py::object exp_avg_sqs, int64_t k, double lr, Schedule lr_schedule,
         double beta1, double beta2, double eps, double weight_decay, double warmup_steps,
         double r, double weight_lr_power, double lr_max, double weight_sum,
         bool silent_sgd_phase) {
        if (kind < 0 || kind > 2) throw py::value_error("kind must be 0 (sgd), 1 (adamw) or 2 (radam)");
        check_t(k);
        const auto sf_kind = static_cast<fastlr::ScheduleFreeKind>(kind);
        fastlr::TensorList list = make_list(
            fastlr::same_precision(to_dtype(dtype)), numel,
            {{"params", params}, {"grads", grads}, {"zs", zs}, {"exp_avg_sqs", exp_avg_sqs}});
        if (list.base[2] == nullptr) throw py::value_error("zs are required");
        if (sf_kind != fastlr::ScheduleFreeKind::sgd && list.base[3] == nullptr)
          throw py::value_error("exp_avg_sqs are required for AdamW and RAdam");
        if (sf_kind == fastlr::ScheduleFreeKind::sgd) list.roles = 3;
        const fastlr::ScheduleFreeGroup group{sf_kind,        k,      eval(lr_schedule, lr, k),
                                              beta1,          beta2,  warmup_steps,
                                              r,              weight_lr_power,
                                              lr_max,         weight_sum,
                                              silent_sgd_phase};
        const fastlr::ScheduleFreeArgs a{sf_kind, fastlr::schedulefree_step_values(group),
                                         weight_decay, beta2, eps};
        {
          py::gil_scoped_release release;
          fastlr::schedulefree_step(to_dtype(dtype), list, scratch.offsets.data(), a);
        }
        const fastlr::ScheduleFreeStep& st = a.step;
        return py::make_tuple(st.scheduled_lr, st.lr_max, st.weight_sum, st.ckp1, st.y_coef,
                              st.bias_correction2, st.adaptive);
      },
      py::arg("kind"), py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("grads"),
      py::arg("zs"), py::arg("exp_avg_sqs"), py::arg("k"), py::arg("lr"),
      py::arg("lr_schedule"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("warmup_steps"), py::arg("r"),
      py::arg("weight_lr_power"), py::arg("lr_max"), py::arg("weight_sum"),
      py::arg("silent_sgd_phase"));

  // p <- lerp(p, z, weight): eval() (weight 1 - 1/beta1) and train() (1 - beta1).
  m.def(
      "schedulefree_lerp",
      [](int dtype, const py::sequence& numel, py::object params, py::object zs, double weight) {
        fastlr::TensorList list =
            make_list(fastlr::same_precision(to_dtype(dtype)), numel, {{"params", params}, {"zs", zs}});
        py::gil_scoped_release release;
        fastlr::schedulefree_lerp(to_dtype(dtype), list, scratch.offsets.data(), weight);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("params"), py::arg("zs"), py::arg("weight"));
}
