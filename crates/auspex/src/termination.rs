//! The termination log: Kubernetes shows what a container wrote to its
//! `terminationMessagePath` as the reason it ended. The file exists only
//! where the platform provides it, so nothing is created elsewhere; and it
//! is written without following a symlink, so that a root agent cannot be
//! made to truncate another file through one.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub fn write(path: &Path, message: &str) {
    match try_write(path, message) {
        Ok(()) => {}
        // No such file: not running where one is provided.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            eprintln!(
                "auspex: not writing the termination log {}: it is a symbolic link",
                path.display()
            );
        }
        Err(e) => eprintln!("auspex: cannot write {}: {e}", path.display()),
    }
}

fn try_write(path: &Path, message: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(message.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_only_where_it_exists_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("termination-log");
        write(&log, "nothing");
        assert!(!log.exists(), "created where none was provided");

        std::fs::write(&log, "a longer message from before").unwrap();
        write(&log, "why");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "why");

        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write(&link, "clobbered");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }
}
