//! A perf event array reader that wakes up once per batch of samples.
//! libbpf-rs' PerfBuffer wakes the reader on every sample, and a wakeup
//! costs more than the sample (here: about 10 µs in a VM, ~80 k events/s at
//! most). This one asks the kernel to wake it every `wakeup_events`
//! samples (libbpf's perf_buffer__new_raw); whatever waits below that is
//! collected by `consume`, which the caller runs at every poll interval:
//! the flush timer.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::time::Duration;

use libbpf_sys::{perf_buffer, perf_event_header};

/// What is done with each sample.
pub(crate) type OnSample = Box<dyn FnMut(&[u8])>;

/// What the C callback reaches through its context pointer.
struct State {
    on_sample: OnSample,
}

pub(crate) struct BatchedPerf {
    pb: NonNull<perf_buffer>,
    // Boxed so its address stays put: libbpf holds a pointer to it.
    // Only held (never read here): the callbacks reach it through libbpf.
    _state: Box<State>,
}

unsafe extern "C" fn on_event(
    ctx: *mut c_void,
    _cpu: c_int,
    event: *mut perf_event_header,
) -> c_int {
    // SAFETY: `ctx` is the `State` this reader owns and outlives the
    // buffer (see Drop); libbpf calls back only from poll/consume, which
    // take `&mut self`, so no other reference to it exists meanwhile.
    let state = unsafe { &mut *ctx.cast::<State>() };
    // SAFETY: libbpf passes a record of `header.size` bytes, starting with
    // the header.
    let record = unsafe {
        let size = usize::from((*event).size);
        std::slice::from_raw_parts(event.cast::<u8>(), size)
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(record.get(at..at + 4)?.try_into().ok()?))
    };
    // Header (8 bytes), then the raw sample's size, then the sample. Not
    // PERF_RECORD_LOST: the programs counted those samples already, per
    // kind, when their output failed (lib/perf_output.h).
    if u32_at(0) == Some(libbpf_sys::PERF_RECORD_SAMPLE) {
        if let Some(sample) = u32_at(8).and_then(|n| record.get(12..12 + n as usize)) {
            (state.on_sample)(sample);
        }
    }
    libbpf_sys::LIBBPF_PERF_EVENT_CONT
}

impl BatchedPerf {
    /// Opens a perf buffer of `pages` pages per CPU on the perf event array
    /// `map`, waking the reader every `wakeup_events` samples.
    pub(crate) fn new(
        map: BorrowedFd<'_>,
        pages: usize,
        wakeup_events: u32,
        on_sample: OnSample,
    ) -> std::io::Result<Self> {
        let mut state = Box::new(State { on_sample });
        let mut attr = libbpf_sys::perf_event_attr {
            type_: libbpf_sys::PERF_TYPE_SOFTWARE,
            size: size_of::<libbpf_sys::perf_event_attr>() as u32,
            config: u64::from(libbpf_sys::PERF_COUNT_SW_BPF_OUTPUT),
            sample_type: u64::from(libbpf_sys::PERF_SAMPLE_RAW),
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = 1;
        attr.__bindgen_anon_2.wakeup_events = wakeup_events;
        let opts = libbpf_sys::perf_buffer_raw_opts {
            sz: size_of::<libbpf_sys::perf_buffer_raw_opts>() as libbpf_sys::size_t,
            ..Default::default()
        };
        // SAFETY: every pointer is valid for the call; libbpf copies `attr`
        // and `opts`, and keeps `state`'s address, which the Box pins for
        // as long as the buffer lives.
        let pb = unsafe {
            libbpf_sys::perf_buffer__new_raw(
                map.as_raw_fd(),
                pages as libbpf_sys::size_t,
                &mut attr,
                Some(on_event),
                std::ptr::from_mut::<State>(&mut state).cast(),
                &opts,
            )
        };
        // libbpf returns NULL and sets errno on failure.
        let pb = NonNull::new(pb).ok_or_else(std::io::Error::last_os_error)?;
        Ok(BatchedPerf { pb, _state: state })
    }

    /// Waits up to `timeout` for a wakeup and reads what it announced.
    pub(crate) fn poll(&mut self, timeout: Duration) -> std::io::Result<()> {
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `pb` is live until Drop.
        let rc = unsafe { libbpf_sys::perf_buffer__poll(self.pb.as_ptr(), ms) };
        match rc {
            rc if rc >= 0 => Ok(()),
            rc if -rc == libc::EINTR => Ok(()),
            rc => Err(std::io::Error::from_raw_os_error(-rc)),
        }
    }

    /// Reads everything waiting on every CPU, woken or not.
    pub(crate) fn consume(&mut self) -> std::io::Result<()> {
        // SAFETY: `pb` is live until Drop.
        let rc = unsafe { libbpf_sys::perf_buffer__consume(self.pb.as_ptr()) };
        if rc < 0 {
            return Err(std::io::Error::from_raw_os_error(-rc));
        }
        Ok(())
    }
}

impl Drop for BatchedPerf {
    fn drop(&mut self) {
        // SAFETY: `pb` came from perf_buffer__new_raw and is freed once;
        // `_state` is dropped after this, so no callback can reach it.
        unsafe { libbpf_sys::perf_buffer__free(self.pb.as_ptr()) };
    }
}
