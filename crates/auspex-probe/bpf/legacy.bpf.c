// SPDX-License-Identifier: GPL-2.0-only
/*
 * The legacy (ebpf) method: classic tracepoints and a perf event array, and
 * no CO-RE relocation at all, so it loads on kernels without BTF and
 * without BPF ring buffers. It reads only tracepoint arguments (their
 * layouts have been stable for years; the structs below copy them) and
 * helpers about the current task. What that cannot tell stays empty:
 * the parent pid of an exec, the argument vector (userspace reads it from
 * /proc), a resolved executable path, network namespaces, the local
 * address of a connected UDP socket. UDP comes from the cgroup socket
 * hooks of lib/udp.h, whose contexts are stable UAPI.
 *
 * Its one syscall tracepoint, exit_group for exit codes, puts every task
 * on the syscall-tracing slow path: the price of this method.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "events.h"
#include "lib/constants.h"
#include "lib/counters.h"
#include "lib/owners.h"
#include "lib/perf_output.h"
#include "lib/scratch.h"
#include "lib/legacy_tcp.h"

char LICENSE[] SEC("license") = "GPL";

/* Exit codes by process, from exit_group, until the process is gone. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} exit_codes SEC(".maps");

/* Tracepoint argument layouts (see /sys/kernel/tracing/events/.../format). */
struct tp_sched_process_exec {
	__u64 common;
	__u32 filename_loc;	/* __data_loc: offset in the low 16 bits */
	__s32 pid;
	__s32 old_pid;
};

struct tp_task_newtask {
	__u64 common;
	__s32 pid;
	char comm[16];
	__u64 clone_flags;
};

struct tp_sys_enter_exit_group {
	__u64 common;
	__s32 syscall_nr;
	__u32 _pad;
	__u64 error_code;
};


/* The current task, as far as helpers tell (no parent). */
static __always_inline void current_task(struct task_info *info)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	info->pid = pid_tgid >> 32;
	info->tid = (__u32)pid_tgid;
	info->ppid = 0;
	info->uid = (__u32)uid_gid;
	info->gid = uid_gid >> 32;
	info->_pad = 0;
	info->cgroup_id = bpf_get_current_cgroup_id();
	/* Unknown without BTF: userspace reads /proc/PID/stat. */
	info->start_boottime = 0;
	bpf_get_current_comm(&info->comm, sizeof(info->comm));
}

static __always_inline void tcp_current_task(struct task_info *info)
{
	current_task(info);
}

static __always_inline void header(struct event_header *hdr, __u32 kind, __u32 size)
{
	hdr->kind = kind;
	hdr->size = size;
	hdr->boot_ns = bpf_ktime_get_boot_ns();
	current_task(&hdr->task);
}

SEC("tracepoint/sched/sched_process_exec")
int legacy_exec(struct tp_sched_process_exec *ctx)
{
	__u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return 0;
	e->argc = 0;
	e->args_len = 0;
	e->flags = AUSPEX_EXEC_EXE_VERBATIM | AUSPEX_EXEC_ARGS_UNREADABLE;
	e->_pad = 0;
	/* Unknown without BTF: userspace reads /proc/PID/cgroup. */
	e->cgroup1_id = 0;
	long n = bpf_probe_read_kernel_str(e->data, AUSPEX_PATH_MAX,
					   (void *)ctx + (ctx->filename_loc & 0xffff));
	__u32 exe_len = n > 1 ? n - 1 : 0;

	if (exe_len > AUSPEX_PATH_MAX)
		exe_len = AUSPEX_PATH_MAX;
	e->exe_len = exe_len;
	__u32 size = offsetof(struct exec_event, data) + exe_len;

	if (size > sizeof(*e))
		return 0;
	header(&e->hdr, AUSPEX_EVENT_EXEC, size);
	emit(ctx, e, size, AUSPEX_DROP_RINGBUF_EXEC);
	return 0;
}

/* task_newtask rather than sched_process_fork: it carries the clone flags,
 * which tell a thread from a process without reading the task. */
SEC("tracepoint/task/task_newtask")
int legacy_fork(struct tp_task_newtask *ctx)
{
	struct fork_event e = {};
	bool thread = ctx->clone_flags & CLONE_THREAD;

	header(&e.hdr, AUSPEX_EVENT_FORK, sizeof(e));
	e.parent_pid = e.hdr.task.pid;
	e.parent_tid = e.hdr.task.tid;
	e.is_thread = thread;
	e.hdr.task.tid = ctx->pid;
	if (!thread) {
		/* Under CLONE_PARENT the child's parent is the caller's parent,
		 * which the helpers do not tell: 0, for userspace to read. */
		e.hdr.task.ppid = ctx->clone_flags & CLONE_PARENT ? 0 : e.hdr.task.pid;
		e.hdr.task.pid = ctx->pid;
	}
	bpf_probe_read_kernel_str(&e.hdr.task.comm, sizeof(e.hdr.task.comm), ctx->comm);
	emit(ctx, &e, sizeof(e), AUSPEX_DROP_RINGBUF_FORK);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_exit_group")
int legacy_exit_group(struct tp_sys_enter_exit_group *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 status = (ctx->error_code & 0xff) << 8;

	bpf_map_update_elem(&exit_codes, &tgid, &status, BPF_ANY);
	return 0;
}

/* Without the task's signal struct, the leader's exit stands for the
 * process's (a leader that exits before its threads is reported early). */
SEC("tracepoint/sched/sched_process_exit")
int legacy_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	if ((__u32)pid_tgid != tgid)
		return 0;
	struct exit_event e = {};

	header(&e.hdr, AUSPEX_EVENT_EXIT, sizeof(e));
	__u32 *status = bpf_map_lookup_elem(&exit_codes, &tgid);

	if (status) {
		e.exit_status = *status;
		bpf_map_delete_elem(&exit_codes, &tgid);
	} else {
		e.flags = AUSPEX_EXIT_STATUS_UNKNOWN;
	}
	emit(ctx, &e, sizeof(e), AUSPEX_DROP_RINGBUF_EXIT);
	return 0;
}

/* TCP: lib/legacy_tcp.h, without the network namespace (keyed by port and
 * family alone), which only the kernel socket tells. */
static __always_inline __u32 legacy_netns(__u64 skaddr)
{
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int legacy_tcp_state(struct tp_inet_sock_set_state *ctx)
{
	return legacy_tcp(ctx);
}

/* UDP: lib/udp.h, without CO-RE. What only the kernel socket tells is
 * absent: the network namespace, and the local address of a connected
 * socket (reported at release, where the hook cannot read its source). */
static __always_inline void udp_output(void *ctx, struct sock_event *e)
{
	emit(ctx, e, sizeof(*e), AUSPEX_DROP_RINGBUF_NET);
}

static __always_inline void udp_read_sock(struct sock_event *e, struct sock *sk)
{
}

#include "lib/udp.h"
