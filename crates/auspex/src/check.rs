//! `auspex check`: the feature probes and, per method, whether it can run
//! here and why not.

use auspex_probe::features::{self, Check, FeatureReport};
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::methods;

#[derive(Debug, Serialize)]
struct MethodVerdict {
    method: &'static str,
    can_run: bool,
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    features: FeatureReport,
    methods: Vec<MethodVerdict>,
}

fn verdicts(features: &FeatureReport) -> Vec<MethodVerdict> {
    let registered = methods::registered();
    methods::KNOWN
        .iter()
        .map(|name| match registered.iter().find(|m| m.name() == *name) {
            Some(m) => {
                let unmet = m.unmet(features);
                MethodVerdict {
                    method: m.name(),
                    can_run: unmet.is_none(),
                    reason: unmet,
                }
            }
            None => MethodVerdict {
                method: name,
                can_run: false,
                reason: Some("not available in this build yet".into()),
            },
        })
        .collect()
}

/// Prints the report; fails when no method can run.
pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.kernel_btf {
        auspex_probe::btf::read_kernel_btf_at(path);
    }
    let features = features::probe_all(
        args.btf.as_deref(),
        Check::from_result(auspex_proc::probe_connector()),
    );
    let report = Report {
        methods: verdicts(&features),
        features,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", readable(&report));
    }
    if !report.methods.iter().any(|m| m.can_run) {
        anyhow::bail!("no collection method can run here");
    }
    Ok(())
}

fn readable(r: &Report) -> String {
    let f = &r.features;
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = format!(
        "kernel {}\nprivileges: CAP_SYS_ADMIN {}, CAP_BPF {}, CAP_PERFMON {}, CAP_NET_ADMIN {}\n\nfeatures:\n",
        f.kernel_release,
        yes(f.privileges.cap_sys_admin),
        yes(f.privileges.cap_bpf),
        yes(f.privileges.cap_perfmon),
        yes(f.privileges.cap_net_admin),
    );
    let mut line = |name: &str, c: &Check| {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!("  {mark} {name:<18} {}\n", c.detail));
    };
    line("kernel BTF", &f.kernel_btf);
    if let Some(file) = &f.btf_file {
        line("BTF file", file);
    }
    line("bpf()", &f.bpf_syscall);
    line("ring buffer", &f.ring_buffer);
    line("perf event array", &f.perf_event_array);
    line("tp_btf", &f.tp_btf);
    line("raw tracepoint", &f.raw_tracepoint);
    line("fentry", &f.fentry);
    line("BPF timers", &f.bpf_timer);
    line("tracefs", &f.tracefs);
    line("cgroup v2", &f.cgroup2);
    line("proc connector", &f.proc_connector);
    out.push_str("\nmethods (in the order auto tries them):\n");
    for m in &r.methods {
        match &m.reason {
            None => out.push_str(&format!("  {:<9} can run\n", m.method)),
            Some(reason) => out.push_str(&format!("  {:<9} cannot run: {reason}\n", m.method)),
        }
    }
    out
}
