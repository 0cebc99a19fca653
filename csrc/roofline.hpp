// Memory-only "roofline" kernels for `fastlr bench`: the read/write streams of an
// optimizer update with no arithmetic worth the name, traversed exactly as the real
// kernels traverse a tensor list (multi_tensor.hpp, same threads). Their time is the
// floor an update of the same tensors can reach on this machine.
#pragma once
#include <cstdint>

#include "fastlr/dtype.hpp"
#include "fastlr/multi_tensor.hpp"

namespace fastlr {

// Role 0 (the params) and roles 2.. (`list.roles - 1` read-write arrays in all) are
// read and written back unchanged; role 1 (the grads) is only read. Adam: 3 read-write
// arrays (28 B/el in float32), SGD-momentum / RMSprop / Adagrad: 2 (20 B/el),
// centered RMSprop with momentum: 4 (36 B/el). Data are left bit-identical.
void roofline(DType dtype, const TensorList& list, int64_t* offsets);

}  // namespace fastlr
