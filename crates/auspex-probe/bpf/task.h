/* SPDX-License-Identifier: GPL-2.0-only */
/* Describing a task for an event, shared by every probe. */
#ifndef AUSPEX_TASK_H
#define AUSPEX_TASK_H

#include "events.h"

static __always_inline void fill_task(struct task_info *info, struct task_struct *task)
{
	info->pid = BPF_CORE_READ(task, tgid);
	info->tid = BPF_CORE_READ(task, pid);
	info->ppid = BPF_CORE_READ(task, real_parent, tgid);
	/* real_cred: the objective credentials, what /proc/<pid>/status shows. */
	info->uid = BPF_CORE_READ(task, real_cred, uid.val);
	info->gid = BPF_CORE_READ(task, real_cred, gid.val);
	info->_pad = 0;
	/* The task's own cgroup rather than current's: for fork the subject is
	 * the child, which may have been cloned into another cgroup. */
	info->cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&info->comm, task, comm);
}

static __always_inline void fill_header(struct event_header *hdr, struct task_struct *task,
					__u32 kind, __u32 size)
{
	hdr->kind = kind;
	hdr->size = size;
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	fill_task(&hdr->task, task);
}

#endif /* AUSPEX_TASK_H */
