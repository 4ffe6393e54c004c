//! Opening and loading a skeleton, for every probe: the loaded skeleton
//! owns its object's storage (nothing is leaked), load errors say what
//! failed, and a load interrupted by signals is tried again.

use std::mem::{ManuallyDrop, MaybeUninit};
use std::path::Path;
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::error::{errno_of, explain, ProbeError};

/// A skeleton type of `skel.rs`, at any lifetime of its object's storage.
pub(crate) trait Skeleton {
    type At<'obj>: Skel<'obj>;

    /// The skeleton with its lifetime shortened to a borrow of its owner,
    /// so that nothing taken from it (a map, a `&rodata`) outlives the
    /// storage. Written as `skel` itself: the compiler accepts that only
    /// because skeletons are covariant in their lifetime.
    fn shorten<'a>(skel: &'a Self::At<'static>) -> &'a Self::At<'a>;
}

/// Implements `Skeleton` for a generated skeleton type.
macro_rules! skeleton {
    ($kind:ident => $skel:ty) => {
        pub(crate) struct $kind;
        impl $crate::loading::Skeleton for $kind {
            type At<'obj> = $skel;
            fn shorten<'a>(skel: &'a Self::At<'static>) -> &'a Self::At<'a> {
                skel
            }
        }
    };
}
pub(crate) use skeleton;

/// Heap memory for a skeleton's object, freed when this is dropped. Only a
/// raw pointer is kept, so the `&mut` the skeleton holds is the one
/// reference to it.
struct Storage(NonNull<MaybeUninit<OpenObject>>);

impl Storage {
    fn new() -> Self {
        Storage(NonNull::from(Box::leak(Box::new(MaybeUninit::uninit()))))
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a Box in `new` and is freed only
        // here. Whoever borrowed it is gone (see `Loaded`), and the memory
        // holds no live object: a skeleton closes its object when it drops,
        // and a failed open or load drops what it had opened.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A loaded skeleton of kind `K` and the storage its object lives in.
///
/// libbpf-rs skeletons borrow that storage (`&'obj mut MaybeUninit`) for
/// their whole life, which a struct cannot express about its own field. So
/// the storage is on the heap, where moving `Loaded` does not move it, and
/// the skeleton is typed as borrowing it for `'static`. That is sound
/// because the `'static` never shows: the skeleton is reachable only
/// through `get`, which shortens its lifetime to the borrow of `self`, and
/// `Drop` drops the skeleton (closing the object) before the storage.
pub(crate) struct Loaded<K: Skeleton> {
    skel: ManuallyDrop<K::At<'static>>,
    // Dropped after `drop` below has run, as a field.
    _storage: Storage,
}

impl<K: Skeleton> Loaded<K> {
    /// Opens the skeleton `builder` builds (relocated against `btf`, else
    /// the kernel's BTF), lets `configure` set it up, and loads it. `probe`
    /// names it in errors.
    pub(crate) fn open<B>(
        probe: &'static str,
        mut builder: B,
        btf: Option<&Path>,
        configure: impl FnOnce(&mut B::Output) -> Result<(), ProbeError>,
    ) -> Result<Self, ProbeError>
    where
        B: SkelBuilder<'static>,
        B::Output: OpenSkel<'static, Output = K::At<'static>>,
    {
        let storage = Storage::new();
        if let Some(path) = btf {
            builder
                .object_builder_mut()
                .btf_custom_path(path)
                .map_err(load_error(probe))?;
        }
        // SAFETY: the storage outlives the skeleton (see `Loaded`), and
        // this is the only reference to it ever made.
        let slot = unsafe { &mut *storage.0.as_ptr() };
        let mut open = builder.open(slot).map_err(load_error(probe))?;
        configure(&mut open)?;
        let skel = open.load().map_err(load_error(probe))?;
        Ok(Loaded {
            skel: ManuallyDrop::new(skel),
            _storage: storage,
        })
    }

    pub(crate) fn get(&self) -> &K::At<'_> {
        K::shorten(&self.skel)
    }
}

impl<K: Skeleton> Drop for Loaded<K> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, and never used again; the storage it
        // borrows is freed only afterwards.
        unsafe { ManuallyDrop::drop(&mut self.skel) };
    }
}

pub(crate) fn load_error(probe: &'static str) -> impl Fn(libbpf_rs::Error) -> ProbeError {
    move |e| match errno_of(&e) {
        Some(libc::EAGAIN) => ProbeError::Interrupted { probe },
        _ => ProbeError::Load {
            probe,
            reason: explain(&e),
        },
    }
}

/// Loads with `load`, again when the verifier was interrupted by signals
/// (a busy process gets some: libbpf's own five tries are not always
/// enough).
pub(crate) fn retry_interrupted<T>(
    mut load: impl FnMut() -> Result<T, ProbeError>,
) -> Result<T, ProbeError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(ProbeError::Interrupted { .. }) if tries < 5 => tries += 1,
            result => return result,
        }
    }
}
