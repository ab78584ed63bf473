// What tch does not expose of libtorch: the CUDA caching allocator's statistics, CUDA
// events, and the multi-tensor ops of torch.optim.AdamW(fused=True) and
// clip_grad_norm_(foreach=True). Only c10's device-generic interfaces and ATen's per-op
// headers are used (no CUDA headers), so this builds against any libtorch; on a machine
// without CUDA the CUDA calls report "unavailable" (libtorch throws, caught here). No C++
// exception crosses into Rust.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstdint>
#include <cstdio>
#include <vector>

namespace {
c10::DeviceAllocator* cuda_allocator() { return c10::getDeviceAllocator(c10::DeviceType::CUDA); }

// tch's tensors are at::Tensor pointers; the ops take a list of tensors (handles).
std::vector<at::Tensor> tensors(const at::Tensor* const* ts, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; i++) list.push_back(*ts[i]);
  return list;
}

// Runs `f`; on an exception writes its message (without libtorch's backtrace) to `error`
// and returns -1.
template <typename F>
int32_t guarded(char* error, size_t error_len, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    std::snprintf(error, error_len, "%s", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::snprintf(error, error_len, "%s", e.what());
  } catch (...) {
    std::snprintf(error, error_len, "unknown C++ exception");
  }
  return -1;
}
}  // namespace

extern "C" {

// Scales `grads` in place so their global L2 norm is at most `max_norm`, as
// torch.nn.utils.clip_grad_norm_(foreach=True): a few kernels, no wait for the device.
int32_t baton_clip_grad_norm(const at::Tensor* const* grads, size_t n, double max_norm, char* error,
                             size_t error_len) {
  return guarded(error, error_len, [&] {
    c10::NoGradGuard no_grad;
    auto g = tensors(grads, n);
    auto total = at::stack(at::_foreach_norm(g, 2)).norm();
    at::_foreach_mul_(g, total.add(1e-6).reciprocal().mul(max_norm).clamp_max(1.0));
  });
}

// One AdamW step over one parameter group, as torch.optim.AdamW(fused=True): the step
// counters (float32 scalars on the parameters' device) are advanced, then one fused
// kernel updates weights and moments.
int32_t baton_fused_adamw(const at::Tensor* const* params, const at::Tensor* const* grads,
                          const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                          const at::Tensor* const* steps, size_t n, double lr, double beta1, double beta2,
                          double weight_decay, double eps, char* error, size_t error_len) {
  return guarded(error, error_len, [&] {
    c10::NoGradGuard no_grad;  // the weights are leaves that require grad, as under torch.no_grad()
    auto s = tensors(steps, n);
    at::_foreach_add_(s, 1);
    at::_fused_adamw_(tensors(params, n), tensors(grads, n), tensors(exp_avgs, n), tensors(exp_avg_sqs, n), {}, s,
                      lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  });
}

// Peak bytes the caching allocator has handed out on `device` since the last reset
// (all pools), or -1 when unavailable.
int64_t baton_cuda_peak_allocated_bytes(int8_t device) {
  try {
    auto stats = cuda_allocator()->getDeviceStats(device);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
}

// Starts a new peak on `device`; 0 on success, -1 when unavailable.
int32_t baton_cuda_reset_peak(int8_t device) {
  try {
    cuda_allocator()->resetPeakStats(device);
    return 0;
  } catch (...) {
    return -1;
  }
}

// A timing event recorded on `device`'s current stream, or null when unavailable.
void* baton_cuda_event_record(int8_t device) {
  try {
    auto event = new c10::Event(c10::DeviceType::CUDA, c10::EventFlag::BACKEND_DEFAULT);
    c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
    try {
      event->record(impl.getStream(c10::Device(c10::DeviceType::CUDA, device)));
    } catch (...) {
      delete event;
      throw;
    }
    return event;
  } catch (...) {
    return nullptr;
  }
}

// Milliseconds from event `start` to event `end` (both completed), or -1 on error.
double baton_cuda_event_elapsed_ms(const void* start, const void* end) {
  try {
    return static_cast<const c10::Event*>(start)->elapsedTime(*static_cast<const c10::Event*>(end));
  } catch (...) {
    return -1.0;
  }
}

void baton_cuda_event_free(void* event) { delete static_cast<c10::Event*>(event); }

}  // extern "C"
