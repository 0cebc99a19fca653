// rmsprop leaves at the avx512 level (see leaves.hpp).
#include "kernels/leaves.hpp"

namespace fastlr {
FASTLR_LEVEL_avx512(FASTLR_RMSPROP_LEAVES)
}  // namespace fastlr
