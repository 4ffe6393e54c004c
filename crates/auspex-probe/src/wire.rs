//! Reading records of the wire format (the generated types) out of bytes.

use std::mem::size_of;
use std::ptr;

use crate::skel::types;

/// A type generated from `bpf/events.h`.
///
/// # Safety
/// Implement only for types made of integers and integer arrays, without
/// implicit padding: every byte pattern is then a valid value, and every
/// byte of a value is initialised. `events.h` states these rules.
pub(crate) unsafe trait Wire: Copy + Default {}

unsafe impl Wire for types::event_header {}
unsafe impl Wire for types::exec_event {}
unsafe impl Wire for types::fork_event {}
unsafe impl Wire for types::exit_event {}
unsafe impl Wire for types::sock_event {}
unsafe impl Wire for types::task_info {}
// Not in events.h: the key of the network probes' listener map (bpf/lib/owners.h:
// u32, u16, u16).
unsafe impl Wire for crate::skel::network::types::listener_key {}

/// Reads a `T` from the start of `bytes`. When `bytes` is shorter than a `T`
/// (a variable-length record), the missing tail reads as zeros; callers
/// check lengths before trusting fields that lie there.
pub(crate) fn read_prefix<T: Wire>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: `n` is within both `bytes` and `value`, the regions cannot
    // overlap, and any bytes form a valid `T` (the `Wire` contract).
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), ptr::from_mut(&mut value).cast::<u8>(), n);
    }
    value
}

/// The bytes of a record, as a probe would send them (or finds them in a map).
pub(crate) fn bytes_of<T: Wire>(value: &T) -> &[u8] {
    // SAFETY: a `Wire` value has no padding, so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts(ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
}
