//! The output: JSON lines to stdout or to the `--output` file, opened
//! before anything is loaded, as a root daemon must open a file whose path
//! others may control: never through a symbolic link (which would let a
//! local user make it truncate any file), created 0600 (it holds every
//! process's arguments), and tried with a write of nothing first, so that
//! an output that refuses writes (`/dev/full`, a closed stdout) fails at
//! start rather than after loading and the self-check.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use super::sink::Sink;

/// JSON lines, to stdout or a file.
pub struct JsonLines {
    out: BufWriter<File>,
}

/// How often the wait for a FIFO's reader looks at the stop flag.
const FIFO_RETRY: Duration = Duration::from_millis(100);

impl JsonLines {
    /// Stdout, through a descriptor of its own (so that a write blocked on
    /// it never holds the lock of Rust's `stdout()`).
    pub fn stdout() -> anyhow::Result<Self> {
        let fd = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("stdout is not open")?;
        let file = File::from(fd);
        writable(&file).context("cannot write events to stdout")?;
        Ok(Self::new(file))
    }

    /// Opens `path` for the events (see the module's comment). A FIFO is
    /// waited on until a reader opens it, or until `stop` is set: `None`.
    pub fn create(path: &Path, stop: &AtomicBool) -> anyhow::Result<Option<Self>> {
        let mut waiting = false;
        let file = loop {
            match open(path) {
                Ok(file) => break file,
                // A FIFO without a reader (the open did not block, as
                // O_NONBLOCK asks): wait for one, and for signals.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if !std::mem::replace(&mut waiting, true) {
                        tracing::info!("waiting for a reader of the FIFO {}", path.display());
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(FIFO_RETRY);
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
                    "refusing to write events to {}: it is a symbolic link (the output is \
                     never opened through one; give the path of the file itself)",
                    path.display()
                ),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create output file {}", path.display()))
                }
            }
        };
        let meta = file.metadata()?;
        if meta.is_file() && meta.mode() & 0o004 != 0 {
            tracing::warn!(
                "the output {} is readable by every user (mode {:o}): it holds every \
                 process's arguments",
                path.display(),
                meta.mode() & 0o777
            );
        }
        writable(&file).with_context(|| format!("cannot write events to {}", path.display()))?;
        Ok(Some(Self::new(file)))
    }

    fn new(file: File) -> Self {
        JsonLines {
            out: BufWriter::with_capacity(64 * 1024, file),
        }
    }
}

/// Opens without following a symbolic link, creating the file 0600, and
/// without blocking on a FIFO that has no reader; then blocking again.
fn open(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(file)
}

/// Whether `file` takes writes: a write of nothing still reaches the
/// device, so that `/dev/full` answers ENOSPC and a file opened read-only
/// EBADF, while a regular file, a pipe or `/dev/null` accept it and
/// nothing is written.
fn writable(mut file: &File) -> io::Result<()> {
    file.write(&[]).map(drop)
}

impl Sink for JsonLines {
    fn name(&self) -> &'static str {
        "the output"
    }

    fn write(&mut self, _kind: &'static str, json: &str) -> io::Result<()> {
        self.out.write_all(json.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// The batch's lines with one write, not copied into the buffer (that
    /// copy was most of the writer thread's CPU in a TCP storm, perf).
    fn write_batch(&mut self, batch: &super::queue::Batch) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_mut().write_all(batch.lines().as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn create(path: &Path) -> anyhow::Result<Option<JsonLines>> {
        JsonLines::create(path, &AtomicBool::new(false))
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("events.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = format!("{:#}", create(&link).err().unwrap());
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn a_new_output_is_created_0600_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out = create(&path).unwrap().unwrap();
        out.write("process_exec", "{}").unwrap();
        out.flush().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn an_output_that_refuses_writes_fails_at_open() {
        let err = format!("{:#}", create(Path::new("/dev/full")).err().unwrap());
        assert_eq!(
            err,
            "cannot write events to /dev/full: No space left on device (os error 28)"
        );
        assert!(create(Path::new("/dev/null")).unwrap().is_some());
    }

    #[test]
    fn a_fifo_without_a_reader_is_waited_for_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Stopped: gives up without blocking.
        assert!(JsonLines::create(&fifo, &AtomicBool::new(true))
            .unwrap()
            .is_none());
        // With a reader: opened, and blocking again (a write waits for the
        // reader rather than failing with EAGAIN).
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let out = create(&fifo).unwrap().unwrap();
        let flags = nix::fcntl::fcntl(out.out.get_ref(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        drop(reader);
    }
}
