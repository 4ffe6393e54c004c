//! Container ids from cgroup paths, for every runtime's naming: the id is
//! the 64 hex digits that end the path (before a trailing `.scope`).

/// The container id (its first 12 hex digits) in a cgroup path, or None
/// for a host process or a path that names no container.
///
/// Shapes covered: `/docker/<id>`, `/system.slice/docker-<id>.scope`,
/// `/kubepods/<qos>/pod<uid>/<id>`, `…slice/cri-containerd-<id>.scope`,
/// `…slice:cri-containerd:<id>`, `…/crio-<id>.scope`,
/// `…/libpod-<id>.scope/container`, nested kind (a kubepods path inside
/// another container's). Podman's `libpod-conmon-<id>.scope` is the
/// container's monitor, not the container: rejected.
pub fn from_cgroup_path(path: &str) -> Option<String> {
    let path = match path.rfind(".scope") {
        Some(i) => &path[..i],
        None => path,
    };
    // Bytes, not chars: the path may hold any UTF-8 before the id.
    let bytes = path.as_bytes();
    let start = bytes.len().checked_sub(65)?;
    let (before, tail) = bytes.split_at(start);
    let (separator, id) = tail.split_first()?;
    if !matches!(separator, b'/' | b'-' | b':') || !id.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    if before.ends_with(b"-conmon") {
        return None;
    }
    Some(String::from_utf8_lossy(&id[..12]).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3b1a8c2d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

    #[test]
    fn every_runtime_shape() {
        let shapes = [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods/besteffort/pod1b2c3d4e-aaaa-bbbb-cccc-123456789abc/{ID}"),
            format!("/kubepods/burstable/pod1b2c3d4e/{ID}"),
            format!("/kubepods/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c.slice/cri-containerd-{ID}.scope"),
            format!("/system.slice/containerd.service/kubepods-besteffort-pod1b2c.slice:cri-containerd:{ID}"),
            format!("/kubepods.slice/kubepods-pod1b2c.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
            // kind: a node is itself a container; the pod's container is the last id.
            format!("/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/kubelet/kubepods/besteffort/pod1b2c/{ID}"),
            format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1b2c.slice/cri-containerd-{ID}.scope"),
        ];
        for shape in &shapes {
            assert_eq!(
                from_cgroup_path(shape).as_deref(),
                Some("3b1a8c2d4e5f"),
                "{shape}"
            );
        }
        let upper = format!("/docker/{}", ID.to_ascii_uppercase());
        assert_eq!(from_cgroup_path(&upper).as_deref(), Some("3b1a8c2d4e5f"));
    }

    #[test]
    fn host_conmon_and_garbage_have_none() {
        let none = [
            "/".to_string(),
            String::new(),
            "/user.slice/user-1000.slice/session-3.scope".to_string(),
            "/system.slice/containerd.service".to_string(),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            // 63 hex digits, a non-hex digit, a wrong separator
            format!("/docker/{}", &ID[1..]),
            format!("/docker/{}g", &ID[1..]),
            format!("/docker_{ID}"),
            format!("/docker/{ID}/extra"),
            "é".repeat(40),
            format!("é{}", &ID[..63]),
        ];
        for path in &none {
            assert_eq!(from_cgroup_path(path), None, "{path:?}");
        }
    }
}
