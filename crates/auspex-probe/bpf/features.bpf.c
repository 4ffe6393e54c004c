// SPDX-License-Identifier: GPL-2.0-only
/*
 * Feature probes: programs that do nothing, each loaded and attached on its
 * own to learn whether this kernel supports its kind of hook. Asking the
 * kernel beats reading its version: libbpf's own "tracing" probe, for one,
 * tests fentry, which some kernels refuse while they accept tp_btf.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sched_process_fork")
int BPF_PROG(probe_tp_btf, struct task_struct *parent, struct task_struct *child)
{
	return 0;
}

SEC("fentry/do_exit")
int BPF_PROG(probe_fentry, long code)
{
	return 0;
}

SEC("raw_tp/sched_process_fork")
int probe_raw_tp(void *ctx)
{
	return 0;
}
