// adam leaves at the avx512 level (see leaves.hpp).
#include "kernels/leaves.hpp"

namespace fastlr {
FASTLR_LEVEL_avx512(FASTLR_ADAM_LEAVES)
}  // namespace fastlr
