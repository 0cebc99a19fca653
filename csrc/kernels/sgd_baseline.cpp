// sgd leaves at the baseline level (see leaves.hpp).
#include "kernels/leaves.hpp"

namespace fastlr {
FASTLR_LEVEL_baseline(FASTLR_SGD_LEAVES)
}  // namespace fastlr
