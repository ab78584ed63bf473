// What tch does not expose of libtorch's CUDA side: the caching allocator's statistics and
// CUDA events. Only c10's device-generic interfaces are used (no CUDA headers), so this
// builds against any libtorch; on a machine without CUDA every call reports "unavailable"
// (libtorch throws, caught here) instead of failing.
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstdint>

namespace {
c10::DeviceAllocator* cuda_allocator() { return c10::getDeviceAllocator(c10::DeviceType::CUDA); }
}  // namespace

extern "C" {

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
