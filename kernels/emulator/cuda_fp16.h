// Host stand-in for CUDA's half type in the CPU emulation (round-to-nearest-even, via
// the compiler's _Float16).
#pragma once
#include <cstring>

struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half_rn(float f) { return {_Float16(f)}; }
