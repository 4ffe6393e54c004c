//! The gRPC stream's Unix socket: mode 0600 before anyone can connect, so
//! only root (the agent's user) can; the file mode is the access control,
//! as Falco's gRPC socket does it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The socket file this agent placed: removed when the listener is dropped
/// on a clean stop, unless another agent's socket has replaced it since.
/// Removed through its directory's descriptor, the one directory the
/// seccomp filter lets the agent unlink in (lockdown.rs).
pub struct Placed {
    dir: std::fs::File,
    name: std::ffi::OsString,
    dev: u64,
    ino: u64,
}

impl Drop for Placed {
    fn drop(&mut self) {
        use nix::fcntl::AtFlags;
        let ours = nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|s| s.st_dev == self.dev && s.st_ino == self.ino);
        if ours {
            if let Err(e) = nix::unistd::unlinkat(
                &self.dir,
                self.name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                tracing::warn!("cannot remove the gRPC socket {:?}: {e}", self.name);
            }
        }
    }
}

/// Binds `path`: under a temporary name, made 0600 before listen() (until
/// then a connect() is refused), then renamed into place, so the socket is
/// never reachable with a wider mode whatever the umask (setting the umask
/// instead would race with the other threads' files). The directory must
/// belong to root (or the agent's user) and be writable by no one else, or
/// another user could swap the socket. A socket left by an agent that died
/// is replaced; a live one, or a file that is not a socket, is an error.
pub fn bind(path: &Path) -> io::Result<(UnixListener, Placed)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    private_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process listens on this socket",
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = listen(&staging, path);
    if listener.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    let listener = listener?;
    listener.set_nonblocking(true)?;
    let meta = std::fs::symlink_metadata(path)?;
    let dir = std::fs::File::open(dir)?;
    crate::lockdown::allow_unlink_in(dir.as_raw_fd());
    Ok((
        listener,
        Placed {
            dir,
            name: name.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Refuses a directory another user could write to (they could replace
/// the socket with their own and read what root's clients send).
fn private_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "its directory {} belongs to uid {}, not root",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "its directory {} is writable by group or others (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Binds `staging`, makes it 0600, listens (the same backlog as TCP,
/// stream.rs), then renames it to `path`: a connect() before listen() is
/// refused, so nobody connects while the mode is still the umask's.
fn listen(staging: &Path, path: &Path) -> io::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(staging)?)?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(super::stream::BACKLOG)?;
    std::fs::rename(staging, path)?;
    Ok(socket.into())
}
