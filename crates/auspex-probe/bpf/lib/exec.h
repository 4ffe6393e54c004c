/* SPDX-License-Identifier: GPL-2.0-only */
/* Building an exec record with CO-RE reads, for every probe that has BTF. */
#ifndef AUSPEX_EXEC_H
#define AUSPEX_EXEC_H

#include <bpf/bpf_core_read.h>

#include "events.h"

/*
 * Writes the executable's path as components leaf first (see events.h),
 * walking dentries and crossing mount points up to the root of the mount
 * namespace, so the path is absolute and resolved (symlinks followed), as
 * /proc/<pid>/exe shows it, whatever the caller passed to execve.
 * bpf_d_path() would be simpler but is not allowed in tp_btf programs.
 */
static __always_inline __u32 read_exe_path(struct file *file, __u8 *buf, __u32 *flags)
{
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	__u64 mnt_offset = bpf_core_field_offset(struct mount, mnt);
	struct mount *mnt = (void *)vfsmnt - mnt_offset;
	__u32 off = 0;

	for (int i = 0; i < AUSPEX_PATH_COMPONENTS; i++) {
		struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);

		if (dentry == mnt_root || dentry == parent) {
			struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

			/* An executable whose dentry is its own parent but not a
			 * mount root is in no directory of any mount: a memfd
			 * (runc re-executes itself from one) or another pseudo
			 * file. The kernel knows it by that dentry's name alone
			 * (/proc/PID/exe: "/memfd:NAME (deleted)"): keep it, and
			 * say so. */
			if (dentry != mnt_root && off == 0) {
				const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
				long n = bpf_probe_read_kernel_str(buf, AUSPEX_NAME_MAX, name);

				if (n > 0) {
					*flags |= AUSPEX_EXEC_EXE_DETACHED;
					return n;
				}
				return 0;
			}
			/* Further up, a detached dentry ends the path as the root
			 * of a mount without a parent (the namespace root) does. */
			if (dentry != mnt_root || mnt_parent == mnt)
				return off;
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = (void *)mnt + mnt_offset;
			continue;
		}
		if (off > AUSPEX_PATH_MAX - AUSPEX_NAME_MAX)
			break;
		const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
		long n = bpf_probe_read_kernel_str(&buf[off & (AUSPEX_PATH_MAX - 1)], AUSPEX_NAME_MAX,
						   name);
		if (n <= 0)
			break;
		off += n;
		dentry = parent;
	}
	*flags |= AUSPEX_EXEC_EXE_TRUNCATED;
	return off;
}

/* Copies the argv area of the new image in one read: at sched_process_exec
 * the new mm is installed and its argument pages were just written by the
 * kernel, so they are present. */
static __always_inline __u32 read_args(struct task_struct *task, __u8 *buf, __u32 *flags)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long len = BPF_CORE_READ(mm, arg_end) - start;

	if (len > AUSPEX_ARGS_MAX) {
		len = AUSPEX_ARGS_MAX;
		*flags |= AUSPEX_EXEC_ARGS_TRUNCATED;
	}
	if (bpf_probe_read_user(buf, len, (void *)start)) {
		*flags |= AUSPEX_EXEC_ARGS_UNREADABLE;
		return 0;
	}
	return len;
}

/*
 * The kernfs id of `task`'s cgroup in the cgroup v1 hierarchy of its memory
 * controller (else its pids controller): see `cgroup1_id` in events.h. 0
 * where that controller is on cgroup v2 (userspace keys containers by the
 * v2 id there) or disabled. The controllers' numbers depend on the
 * kernel's configuration: CO-RE enum relocations, constants at load.
 */
static __always_inline __u64 cgroup1_id(struct task_struct *task)
{
	__u32 ssid;

	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		ssid = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	else if (bpf_core_enum_value_exists(enum cgroup_subsys_id, pids_cgrp_id))
		ssid = bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	else
		return 0;
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = NULL;
	void *slot = (void *)cset + bpf_core_field_offset(struct css_set, subsys) +
		     (ssid & 63) * sizeof(css);

	if (!cset || bpf_probe_read_kernel(&css, sizeof(css), slot) || !css)
		return 0;
	struct cgroup *cgrp = BPF_CORE_READ(css, cgroup);

	/* The controller on cgroup v2 (or disabled, bound to v2's root): no
	 * v1 hierarchy names the task's cgroup. */
	if (!cgrp || BPF_CORE_READ(cgrp, root) == BPF_CORE_READ(cset, dfl_cgrp, root))
		return 0;
	return BPF_CORE_READ(cgrp, kn, id);
}

/* Fills an exec record's body (path, then arguments) from `task`, which
 * has just exec'd `file`; returns the record's size. */
static __always_inline __u32 fill_exec(struct exec_event *e, struct task_struct *task,
				       struct file *file, __u32 argc)
{
	e->argc = argc;
	e->flags = 0;
	e->_pad = 0;
	e->cgroup1_id = cgroup1_id(task);

	__u32 exe_len = read_exe_path(file, e->data, &e->flags);
	if (exe_len > AUSPEX_PATH_MAX)
		exe_len = AUSPEX_PATH_MAX;
	__u32 args_len = read_args(task, &e->data[exe_len & (AUSPEX_PATH_MAX - 1)], &e->flags);
	if (args_len > AUSPEX_ARGS_MAX)
		args_len = AUSPEX_ARGS_MAX;
	e->exe_len = exe_len;
	e->args_len = args_len;
	return offsetof(struct exec_event, data) + exe_len + args_len;
}

#endif /* AUSPEX_EXEC_H */
