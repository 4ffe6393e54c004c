//! The termination log: Kubernetes shows what a container wrote to its
//! `terminationMessagePath` as the reason it ended. The file exists only
//! where the platform provides it, so nothing is created elsewhere.

use std::path::Path;

pub fn write(path: &Path, message: &str) {
    if path.exists() {
        if let Err(e) = std::fs::write(path, message) {
            eprintln!("auspex: cannot write {}: {e}", path.display());
        }
    }
}
