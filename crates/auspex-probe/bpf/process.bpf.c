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
#include "output.h"
#include "scratch.h"
#include "task.h"

char LICENSE[] SEC("license") = "GPL";


/*
 * Writes the executable's path as components leaf first (see events.h),
 * walking dentries and crossing mount points up to the root of the mount
 * namespace, so the path is absolute and resolved (symlinks followed), as
 * /proc/<pid>/exe shows it, whatever the caller passed to execve.
 * bpf_d_path() would be simpler but is not allowed in tp_btf programs.
 */
static __always_inline __u32 read_exe_path(struct linux_binprm *bprm, __u8 *buf, __u32 *flags)
{
	struct file *file = BPF_CORE_READ(bprm, file);
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

			/* A dentry that is its own parent but not a mount root is
			 * detached; the root of a mount without a parent is the
			 * namespace root. Either way the path is complete. */
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

/* Copies the argv area of the new image in one read: at this tracepoint the
 * new mm is installed and its argument pages were just written by the
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

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return 0;
	e->argc = BPF_CORE_READ(bprm, argc);
	e->flags = 0;
	e->_pad = 0;

	__u32 exe_len = read_exe_path(bprm, e->data, &e->flags);
	if (exe_len > AUSPEX_PATH_MAX)
		exe_len = AUSPEX_PATH_MAX;
	__u32 args_len = read_args(task, &e->data[exe_len & (AUSPEX_PATH_MAX - 1)], &e->flags);
	if (args_len > AUSPEX_ARGS_MAX)
		args_len = AUSPEX_ARGS_MAX;
	e->exe_len = exe_len;
	e->args_len = args_len;

	__u32 size = offsetof(struct exec_event, data) + exe_len + args_len;
	if (size > sizeof(*e))
		return 0;
	fill_header(&e->hdr, task, AUSPEX_EVENT_EXEC, size);
	if (bpf_ringbuf_output(&events, e, size, wakeup_flag()))
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
	fill_header(&e->hdr, child, AUSPEX_EVENT_FORK, sizeof(*e));
	e->parent_pid = BPF_CORE_READ(parent, tgid);
	e->parent_tid = BPF_CORE_READ(parent, pid);
	e->is_thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);
	e->_pad = 0;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task)
{
	/* Every exiting thread passes here. do_exit() decrements signal->live
	 * before this tracepoint, so only the group's last thread sees zero.
	 * (Newer kernels pass group_dead as an argument; reading the counter
	 * works on all of them.) */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;

	struct exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AUSPEX_DROP_RINGBUF_EXIT);
		return 0;
	}
	fill_header(&e->hdr, task, AUSPEX_EVENT_EXIT, sizeof(*e));
	e->exit_status = BPF_CORE_READ(task, exit_code);
	e->flags = 0;
	bpf_ringbuf_submit(e, wakeup_flag());
	return 0;
}
