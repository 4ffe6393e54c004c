//! The connection tracker: turns the raw stream of opens and closes into a
//! table of connections and endpoints reported as periodic deltas, the way
//! an operator wants them. Pure safe Rust; time comes from the events and
//! from the caller, so tests control the clock.
#![forbid(unsafe_code)]

mod normalise;
mod tracker;

pub use normalise::{Normaliser, Peer};
pub use tracker::{Tracker, TrackerConfig, TrackerStats};
