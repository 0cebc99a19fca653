// rmsprop leaves at the avx2 level (see leaves.hpp).
#include "kernels/leaves.hpp"

namespace fastlr {
FASTLR_LEVEL_avx2(FASTLR_RMSPROP_LEAVES)
}  // namespace fastlr
