// A host emulation of the parts of CUDA that the focal loss kernels use, so that their own source
// (retinanet_plugin/csrc/cuda/focal_loss_kernels.cuh) runs on the CPU, every (block, thread) of each launch:
//
// - each thread of a block is a fiber (ucontext) with its own stack; the fibers of a block run on this OS thread,
//   one at a time, switching only at barriers, so the result is deterministic;
// - __syncthreads() waits until every thread of the block has reached it; a thread that exits while others wait
//   there is reported as a divergent barrier (undefined behaviour on a GPU);
// - __shfl_down_sync(0xffffffff, v, d) is a 32-lane exchange: every lane of the warp deposits its value, then reads
//   lane + d's (its own past lane 31), with a warp barrier before and after; a lane that never arrives is reported;
// - __shared__ variables are function statics: one copy, shared by the threads of the running block;
// - CUDA_KERNEL_ASSERT_MSG records the first failed assertion instead of aborting;
// - RP_EMULATION_VISIT(row, col) counts the kernels' visits of each element when a counter array is set;
// - __half and __nv_bfloat16 are 16-bit storage types with round-to-nearest-even conversions.
// - 128-bit accesses (the kernels' vector loads and stores) at an address that is not 16-byte aligned are reported,
//   as a GPU faults on them;
// - two schedules: threads in index order, or warp by warp from the highest, each warp running as far as it can
//   (its shuffles included) before the next: the second exposes shared-memory reuse without a barrier.
// Blocks run one after another (the kernels do not communicate between blocks within a launch).
#pragma once

#define RP_CUDA_EMULATION 1

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorLaunchFailure = 4 };

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// ------------------------------------------------------------------------------------------- 16-bit floats

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1f;
  uint32_t mantissa = h.bits & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | ((112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return {static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u))};
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    return {static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero, rounded to nearest even
    float magnitude;
    std::memcpy(&magnitude, &abs, 4);
    const float scaled = magnitude * 16777216.0f;  // 2^24: one unit = the smallest subnormal half
    uint32_t q = static_cast<uint32_t>(scaled);
    const float rest = scaled - static_cast<float>(q);
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) {
      ++q;
    }
    return {static_cast<uint16_t>(sign | q)};
  }
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  return {static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
}

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  }
  return {static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

// ------------------------------------------------------------------------------------------- the scheduler

namespace rp_emulation {

// What one emulated run observed, for the tests.
struct Report {
  int launches = 0;
  std::vector<int> grids;     // blocks of each launch, in order
  std::string assertion;      // the first failed CUDA_KERNEL_ASSERT_MSG, empty if none
  int64_t assertion_count = 0;
  std::string error;          // a barrier or shuffle misuse, empty if none
  int32_t* visits = nullptr;  // [rows * cols] counters, or nullptr
  int64_t visit_cols = 0;
  int64_t visit_rows = 0;
  int64_t visits_out_of_range = 0;
};

inline Report report;

enum class Schedule { InOrder, HighestWarpFirst };
inline Schedule schedule = Schedule::InOrder;

enum class FiberState { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  FiberState state = FiberState::Ready;
};

inline constexpr size_t kStackBytes = 128 * 1024;

struct Block {
  std::vector<Fiber> fibers;  // their stacks are reused by every block of a launch
  ucontext_t scheduler;
  int current = -1;
  const std::function<void()>* body = nullptr;
  uint64_t warp_slots[1024 / 32][32];
};

inline Block* running = nullptr;

}  // namespace rp_emulation

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace rp_emulation {

inline void fail(const std::string& message) {
  if (report.error.empty()) {
    report.error = message;
  }
}

// Back to the scheduler, in `state`; returns when the scheduler resumes this fiber.
inline void wait(FiberState state) {
  Block& b = *running;
  Fiber& f = b.fibers[b.current];
  f.state = state;
  swapcontext(&f.context, &b.scheduler);
}

inline void trampoline() {
  (*running->body)();
  running->fibers[running->current].state = FiberState::Done;
  // returning resumes uc_link: the scheduler
}

inline void run_block(Block& b, unsigned threads, const std::function<void()>& body) {
  b.body = &body;
  running = &b;
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.state = FiberState::Ready;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, trampoline, 0);
  }
  const unsigned warps = (threads + 31) / 32;
  auto resume = [&](unsigned t) {
    b.current = static_cast<int>(t);
    threadIdx.x = t;
    swapcontext(&b.scheduler, &b.fibers[t].context);
  };
  while (true) {
    if (schedule == Schedule::InOrder) {
      for (unsigned t = 0; t < threads; ++t) {
        if (b.fibers[t].state == FiberState::Ready) {
          resume(t);
        }
      }
    } else {
      for (int w = static_cast<int>(warps) - 1; w >= 0; --w) {
        const unsigned first = static_cast<unsigned>(w) * 32, last = std::min(threads, first + 32);
        while (true) {
          for (unsigned t = first; t < last; ++t) {
            if (b.fibers[t].state == FiberState::Ready) {
              resume(t);
            }
          }
          bool whole_warp_waits = true;
          for (unsigned t = first; t < last; ++t) {
            whole_warp_waits = whole_warp_waits && b.fibers[t].state == FiberState::AtWarpBarrier;
          }
          if (!whole_warp_waits) {
            break;
          }
          for (unsigned t = first; t < last; ++t) {
            b.fibers[t].state = FiberState::Ready;
          }
        }
      }
    }
    unsigned done = 0, at_block = 0;
    for (const Fiber& f : b.fibers) {
      done += f.state == FiberState::Done;
      at_block += f.state == FiberState::AtBlockBarrier;
    }
    if (done == threads) {
      break;
    }
    bool released = false;
    for (unsigned w = 0; w < warps; ++w) {  // a warp barrier opens when all 32 lanes are there
      const unsigned first = w * 32, last = std::min(threads, first + 32);
      unsigned arrived = 0;
      for (unsigned t = first; t < last; ++t) {
        arrived += b.fibers[t].state == FiberState::AtWarpBarrier;
      }
      if (arrived == last - first) {
        for (unsigned t = first; t < last; ++t) {
          b.fibers[t].state = FiberState::Ready;
        }
        released = true;
      }
    }
    if (released) {
      continue;
    }
    if (at_block == threads) {
      for (Fiber& f : b.fibers) {
        f.state = FiberState::Ready;
      }
      continue;
    }
    fail(at_block > 0 && done > 0 ? "__syncthreads: some threads of the block exited instead of reaching it"
                                  : "a warp shuffle was not reached by all 32 lanes of its warp");
    break;  // the waiting fibers are abandoned with the block
  }
  running = nullptr;
}

// Runs `body` as kernel<<<grid, threads>>>.
inline void launch(int grid, unsigned threads, const std::function<void()>& body) {
  ++report.launches;
  report.grids.push_back(grid);
  gridDim.x = static_cast<unsigned>(grid);
  blockDim.x = threads;
  static Block b;  // the fibers' stacks, allocated once for every launch
  if (b.fibers.size() < threads) {
    b.fibers.resize(threads);
    for (Fiber& f : b.fibers) {
      f.stack.resize(kStackBytes);
    }
  }
  for (int block = 0; block < grid && report.error.empty(); ++block) {
    blockIdx.x = static_cast<unsigned>(block);
    run_block(b, threads, body);
  }
}

inline void check_aligned_16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    fail("a 128-bit access at an address that is not 16-byte aligned (a misaligned-address fault on a GPU)");
  }
}

inline void visit(int64_t row, int64_t col) {
  if (report.visits == nullptr) {
    return;
  }
  if (row < 0 || row >= report.visit_rows || col < 0 || col >= report.visit_cols) {
    ++report.visits_out_of_range;
    return;
  }
  ++report.visits[row * report.visit_cols + col];
}

}  // namespace rp_emulation

inline void __syncthreads() {
  rp_emulation::wait(rp_emulation::FiberState::AtBlockBarrier);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
  if (mask != 0xffffffffu) {
    rp_emulation::fail("__shfl_down_sync with a partial mask: the kernels shuffle whole warps");
  }
  rp_emulation::Block& b = *rp_emulation::running;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  std::memcpy(&b.warp_slots[warp][lane], &value, sizeof(T));
  rp_emulation::wait(rp_emulation::FiberState::AtWarpBarrier);  // every lane has deposited
  T result = value;
  if (lane + delta < 32) {
    std::memcpy(&result, &b.warp_slots[warp][lane + delta], sizeof(T));
  }
  rp_emulation::wait(rp_emulation::FiberState::AtWarpBarrier);  // every lane has read
  return result;
}

#define CUDA_KERNEL_ASSERT_MSG(cond, msg)                  \
  do {                                                     \
    if (!(cond)) {                                         \
      if (rp_emulation::report.assertion.empty()) {        \
        rp_emulation::report.assertion = (msg);            \
      }                                                    \
      ++rp_emulation::report.assertion_count;              \
    }                                                      \
  } while (0)

#define RP_EMULATION_VISIT(row, col) rp_emulation::visit((row), (col))
#define RP_EMULATION_ALIGNED_16(pointer) rp_emulation::check_aligned_16(pointer)
