// SPDX-License-Identifier: GPL-2.0-only
/*
 * Process lifecycle probe of the core_bpf method: exec, fork and exit from
 * BTF-aware scheduler tracepoints. No syscall hook of any kind: these
 * tracepoints fire only for the events we report, so unrelated syscalls
 * pay nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "events.h"
#include "lib/output.h"
#include "lib/scratch.h"
#include "lib/task.h"
#include "lib/exec.h"
#include "lib/exit_once.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return 0;
	__u32 size = fill_exec(e, task, BPF_CORE_READ(bprm, file), BPF_CORE_READ(bprm, argc));
	if (size > sizeof(*e))
		return 0;
	fill_header(&e->hdr, task, AUSPEX_EVENT_EXEC, size, TRUSTED);
	if (bpf_ringbuf_output(&events, e, size, wakeup_flag(size)))
		count(AUSPEX_DROP_RINGBUF_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	struct fork_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AUSPEX_DROP_RINGBUF_FORK);
		return 0;
	}
	fill_header(&e->hdr, child, AUSPEX_EVENT_FORK, sizeof(*e), TRUSTED);
	e->parent_pid = BPF_CORE_READ(parent, tgid);
	e->parent_tid = BPF_CORE_READ(parent, pid);
	e->is_thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flag(sizeof(*e)));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task)
{
	/* Every exiting thread passes here; one reports the process. */
	if (!reports_process_exit(task))
		return 0;

	struct exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AUSPEX_DROP_RINGBUF_EXIT);
		return 0;
	}
	fill_header(&e->hdr, task, AUSPEX_EVENT_EXIT, sizeof(*e), TRUSTED);
	e->exit_status = BPF_CORE_READ(task, exit_code);
	e->flags = 0;
	bpf_ringbuf_submit(e, wakeup_flag(sizeof(*e)));
	return 0;
}
