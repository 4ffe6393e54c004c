//! Features a probe runs without some of their parts, and why.

/// A feature that runs without some of its parts, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub feature: &'static str,
    pub reason: String,
}
