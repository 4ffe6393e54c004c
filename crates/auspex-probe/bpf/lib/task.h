/* SPDX-License-Identifier: GPL-2.0-only */
/* Describing a task for an event, shared by every probe. */
#ifndef AUSPEX_TASK_H
#define AUSPEX_TASK_H

#include "events.h"
#include "lib/reads.h"

static __always_inline void fill_task(struct task_info *info, struct task_struct *task,
					bool trusted)
{
	info->pid = KREAD(trusted, task->tgid, task, tgid);
	info->tid = KREAD(trusted, task->pid, task, pid);
	info->ppid = KREAD(trusted, task->real_parent->tgid, task, real_parent, tgid);
	/* real_cred: the objective credentials, what /proc/<pid>/status shows. */
	info->uid = KREAD(trusted, task->real_cred->uid.val, task, real_cred, uid.val);
	info->gid = KREAD(trusted, task->real_cred->gid.val, task, real_cred, gid.val);
	info->_pad = 0;
	/* The task's own cgroup rather than current's: for fork the subject is
	 * the child, which may have been cloned into another cgroup. */
	info->cgroup_id = KREAD(trusted, task->cgroups->dfl_cgrp->kn->id, task, cgroups, dfl_cgrp,
				kn, id);
	/* The leader's: a thread's own start is not the process's, and exec
	 * (de_thread) gives the exec'ing thread its leader's start anyway. */
	info->start_boottime = KREAD(trusted, task->group_leader->start_boottime, task,
				     group_leader, start_boottime);
	if (trusted)
		__builtin_memcpy(info->comm, task->comm, sizeof(info->comm));
	else
		BPF_CORE_READ_STR_INTO(&info->comm, task, comm);
}

/*
 * The calling task, for a tracing program (tp_btf or a classic tracepoint)
 * in process context. Where the kernel has bpf_get_current_task_btf()
 * (5.11+) the verifier knows the task's type and fill_task() reads it with
 * direct loads; before that, each of its 15 reads is a
 * bpf_probe_read_kernel() call, the largest share of the TCP probe's time
 * after the hash map updates (perf, 30,000 loopback connections: 15 % of
 * handle_tcp_state's samples in bpf_probe_read_kernel). The test is a CO-RE
 * relocation, a constant at load: the verifier drops the branch the kernel
 * cannot take, helper call and all. Not for the cgroup socket hooks, which
 * may not call the _btf helper.
 */
static __always_inline void fill_current_task(struct task_info *info)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		fill_task(info, bpf_get_current_task_btf(), TRUSTED);
	else
		fill_task(info, (struct task_struct *)bpf_get_current_task(), UNTRUSTED);
}

/* `trusted`: see reads.h. */
static __always_inline void fill_header(struct event_header *hdr, struct task_struct *task,
					__u32 kind, __u32 size, bool trusted)
{
	hdr->kind = kind;
	hdr->size = size;
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	fill_task(&hdr->task, task, trusted);
}

#endif /* AUSPEX_TASK_H */
