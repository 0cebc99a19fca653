// rmsprop leaves at the baseline level (see leaves.hpp).
#include "kernels/leaves.hpp"

namespace fastlr {
FASTLR_LEVEL_baseline(FASTLR_RMSPROP_LEAVES)
}  // namespace fastlr
