//! The collection methods, best first: what `auto` tries, in this order.
//! Each method's crate implements `auspex_collect::Method`; adding a method
//! is adding its value here.

use anyhow::bail;
use auspex_collect::Method;

pub const METHODS: &[&dyn Method] = &[
    &auspex_probe::CoreBpfMethod,
    &auspex_probe::EbpfMethod,
    &auspex_proc::ProcMethod,
];

/// The methods to try for `--method requested`: all of them for `auto`,
/// else the one named.
pub fn candidates(requested: &str) -> anyhow::Result<Vec<&'static dyn Method>> {
    let all = crate::hooks::first_method()
        .into_iter()
        .chain(METHODS.iter().copied());
    let chosen: Vec<_> = match requested {
        "auto" => all.collect(),
        name => all.filter(|m| m.name() == name).collect(),
    };
    if chosen.is_empty() {
        bail!("there is no {requested} method");
    }
    Ok(chosen)
}

/// What `auto` tries, in order (a test build may put one first).
fn all() -> impl Iterator<Item = &'static dyn Method> {
    crate::hooks::first_method()
        .into_iter()
        .chain(METHODS.iter().copied())
}

/// The names of what `auto` tries, in order.
pub fn order() -> Vec<&'static str> {
    all().map(|m| m.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_named_methods_are_found() {
        let names: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in names {
            let found = candidates(name).unwrap();
            assert_eq!(found.last().unwrap().name(), name);
        }
        assert!(candidates("dtrace").is_err());
    }
}
