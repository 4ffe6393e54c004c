//! Where CO-RE relocations come from: the kernel's own BTF, or a file the
//! user gives (`--btf`), checked before libbpf sees it so that a bad file
//! gets a clear message.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libbpf_rs::btf::{types::Struct, Btf};

use crate::error::{errno_of, explain, ProbeError};

/// Where the kernel publishes its own BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

static KERNEL_BTF_AT: OnceLock<PathBuf> = OnceLock::new();

/// Reads the running kernel's BTF from `path` instead of [`KERNEL_BTF`]:
/// in a container, the host's file mounted somewhere of the agent's
/// choosing, so that a missing mount shows as a kernel without BTF rather
/// than going unnoticed. Process-wide, like the location of /proc; set once
/// at startup, before any probe (a later call is ignored and returns false).
pub fn read_kernel_btf_at(path: &Path) -> bool {
    KERNEL_BTF_AT.set(path.to_path_buf()).is_ok()
}

/// Where the running kernel's BTF is read.
pub fn kernel_btf() -> &'static Path {
    KERNEL_BTF_AT.get_or_init(|| KERNEL_BTF.into())
}

pub fn kernel_btf_present() -> bool {
    kernel_btf().exists()
}

/// Why the kernel's BTF is missing, as far as can be told.
pub fn kernel_btf_missing() -> String {
    match kernel_btf_elsewhere() {
        None => {
            format!("{KERNEL_BTF} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF")
        }
        Some(path) => format!(
            "{} is missing: the host's {KERNEL_BTF} is not mounted there, or the kernel was \
             built without CONFIG_DEBUG_INFO_BTF",
            path.display()
        ),
    }
}

/// The kernel's BTF when it is read from elsewhere than the kernel's own
/// file: CO-RE relocations must then come from it explicitly, since libbpf
/// looks only at [`KERNEL_BTF`] by itself. (Attaching tp_btf programs still
/// needs the kernel's own BTF object, which libbpf finds on its own.)
pub fn kernel_btf_elsewhere() -> Option<&'static Path> {
    let path = kernel_btf();
    (path != Path::new(KERNEL_BTF)).then_some(path)
}

/// Parses a BTF file (raw BTF, or an ELF with a .BTF section) and checks
/// that it describes a kernel.
pub fn check_btf_file(path: &Path) -> Result<(), ProbeError> {
    // libbpf's complaint about the file goes to the log at debug level:
    // the error returned says it once, clearly.
    crate::libbpf_log::forward_to_tracing();
    if !path.exists() {
        return Err(ProbeError::BtfFileMissing(path.to_path_buf()));
    }
    let invalid = |reason: String| ProbeError::BtfFileInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let btf = Btf::from_path(path).map_err(|e| {
        invalid(match errno_of(&e) {
            Some(4001) => "not a BTF file (neither raw BTF nor an ELF with a .BTF section)".into(),
            Some(libc::EINVAL) => "corrupt or truncated BTF".into(),
            _ => explain(&e),
        })
    })?;
    if btf.type_by_name::<Struct<'_>>("task_struct").is_none() {
        return Err(invalid(
            "valid BTF, but not a kernel's: it has no struct task_struct".into(),
        ));
    }
    Ok(())
}

/// The BTF to relocate against: the given file, else the kernel's own.
pub(crate) fn relocation_source(file: Option<&Path>) -> Result<Option<PathBuf>, ProbeError> {
    if let Some(path) = file {
        check_btf_file(path)?;
    }
    if !kernel_btf_present() {
        return Err(ProbeError::NoKernelBtf {
            missing: kernel_btf_missing(),
            hint: if file.is_some() {
                "; a --btf file supplies CO-RE relocations but cannot replace it for attaching"
            } else {
                ""
            },
        });
    }
    Ok(file.or(kernel_btf_elsewhere()).map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn missing_random_truncated_and_foreign_files_are_rejected_clearly() {
        let err = check_btf_file(Path::new("/nonexistent/vmlinux.btf")).unwrap_err();
        assert!(matches!(err, ProbeError::BtfFileMissing(_)), "{err}");

        let mut random = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        random.write_all(&bytes).unwrap();
        let err = check_btf_file(random.path()).unwrap_err().to_string();
        assert!(err.contains("not a BTF file"), "{err}");
        assert!(!err.contains("Unknown error"), "{err}");

        let kernel = std::fs::read(KERNEL_BTF).expect("this test needs kernel BTF");
        let mut truncated = tempfile::NamedTempFile::new().unwrap();
        truncated.write_all(&kernel[..kernel.len() / 2]).unwrap();
        let err = check_btf_file(truncated.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt or truncated"), "{err}");

        let mut copy = tempfile::NamedTempFile::new().unwrap();
        copy.write_all(&kernel).unwrap();
        check_btf_file(copy.path()).unwrap();
    }
}
