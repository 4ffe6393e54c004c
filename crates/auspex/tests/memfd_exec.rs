//! An executable run from a memfd (runc re-executes itself from one, so
//! every container start has such an exec) is in no mounted directory: the
//! probes' path walk found nothing and the exec had no `exe` (issue 16: 8
//! of 18,100 execs in a container test). The kernel has a name for it, as
//! /proc/PID/exe shows: that is reported, marked `exe_detached`. Needs root.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::Agent;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;

fn exec_from_a_memfd_is_named_as_the_kernel_names_it(method: &str) {
    let agent = Agent::start(&["--method", method]);
    // Not close-on-exec: the child execs it through /proc/self/fd.
    let memfd = memfd_create("auspex-test:/proc/self/exe", MFdFlags::empty()).unwrap();
    let mut file = std::fs::File::from(memfd);
    file.write_all(&std::fs::read("/bin/sleep").unwrap())
        .unwrap();
    let mut child = Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .arg0("sleep-from-memfd")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let exec = agent.event_where("process_exec", pid, |e| {
        e["process"]["args"][0] == "sleep-from-memfd"
    });
    // What the kernel says, read while the process runs.
    let kernel = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        kernel.to_str().unwrap(),
        "/memfd:auspex-test:/proc/self/exe (deleted)"
    );
    assert_eq!(exec["process"]["exe"], kernel.to_str().unwrap(), "{exec}");
    assert_eq!(exec["process"]["exe_detached"], true, "{exec}");
    assert!(exec["process"].get("exe_truncated").is_none(), "{exec}");
    let (status, stderr) = agent.stop(Signal::SIGTERM);
    assert!(status.success(), "{}", stderr.join("\n"));
}

#[test]
fn core_bpf_names_an_exec_from_a_memfd() {
    exec_from_a_memfd_is_named_as_the_kernel_names_it("core_bpf");
}

#[test]
fn ebpf_with_btf_names_an_exec_from_a_memfd() {
    exec_from_a_memfd_is_named_as_the_kernel_names_it("ebpf");
}
