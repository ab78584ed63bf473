//! libtorch's CUDA side that tch does not expose (cpp/libtorch.cpp): the caching allocator's
//! peak and CUDA events. Every call answers `None` where CUDA is not there.

use std::ffi::c_void;
use std::ptr::NonNull;

unsafe extern "C" {
    fn baton_cuda_peak_allocated_bytes(device: i8) -> i64;
    fn baton_cuda_reset_peak(device: i8) -> i32;
    fn baton_cuda_event_record(device: i8) -> *mut c_void;
    fn baton_cuda_event_elapsed_ms(start: *const c_void, end: *const c_void) -> f64;
    fn baton_cuda_event_free(event: *mut c_void);
}

fn index(device: usize) -> i8 {
    i8::try_from(device).unwrap_or(i8::MAX)
}

/// Peak bytes libtorch's caching allocator handed out on `device` since [`reset_peak`].
pub fn peak_allocated_bytes(device: usize) -> Option<u64> {
    // SAFETY: plain values in and out; the C++ side catches every exception.
    u64::try_from(unsafe { baton_cuda_peak_allocated_bytes(index(device)) }).ok()
}

/// Starts a new peak on `device`; false where CUDA is not there.
pub fn reset_peak(device: usize) -> bool {
    // SAFETY: as above.
    unsafe { baton_cuda_reset_peak(index(device)) == 0 }
}

/// A timing event recorded on the device's current stream (where libtorch queues kernels).
pub struct Event(NonNull<c_void>);

impl Event {
    pub fn record(device: usize) -> Option<Self> {
        // SAFETY: returns an owned c10::Event, or null when CUDA is not there.
        NonNull::new(unsafe { baton_cuda_event_record(index(device)) }).map(Self)
    }

    /// Milliseconds from this event to `end`; both must have completed (the device was
    /// synchronized after `end` was recorded).
    pub fn elapsed_ms(&self, end: &Event) -> Option<f64> {
        // SAFETY: both pointers are live c10::Events owned by `self` and `end`.
        let ms = unsafe { baton_cuda_event_elapsed_ms(self.0.as_ptr(), end.0.as_ptr()) };
        (ms >= 0.0).then_some(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event was made by baton_cuda_event_record and is freed once.
        unsafe { baton_cuda_event_free(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without CUDA (this machine, or one whose driver is missing) every call says so
    /// instead of failing; on a GPU machine the same calls measure.
    #[test]
    fn without_cuda_everything_is_none() {
        if crate::device::load_cuda() {
            let e = Event::record(0).expect("an event on cuda:0");
            let f = Event::record(0).expect("a second event");
            tch::Cuda::synchronize(0);
            assert!(e.elapsed_ms(&f).is_some_and(|ms| ms >= 0.0));
            assert!(reset_peak(0));
            assert!(peak_allocated_bytes(0).is_some());
        } else {
            assert!(Event::record(0).is_none());
            assert!(!reset_peak(0));
            assert_eq!(peak_allocated_bytes(0), None);
        }
    }
}
