// SPDX-License-Identifier: GPL-2.0-only
/*
 * The legacy (ebpf) method: classic tracepoints and a perf event array, and
 * no CO-RE relocation at all, so it loads on kernels without BTF and
 * without BPF ring buffers. It reads only tracepoint arguments (their
 * layouts have been stable for years; the structs below copy them) and
 * helpers about the current task. What that cannot tell stays empty:
 * the parent pid of an exec, the argument vector (userspace reads it from
 * /proc), a resolved executable path, network namespaces, UDP.
 *
 * Its one syscall tracepoint, exit_group for exit codes, puts every task
 * on the syscall-tracing slow path: the price of this method.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "events.h"
#include "counters.h"
#include "owners.h"
#include "scratch.h"
#include "perf_output.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define IPPROTO_TCP 6
#define CLONE_THREAD 0x00010000




/* Exit codes by process, from exit_group, until the process is gone. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} exit_codes SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

/* Listeners by (port, family): without BTF the network namespace is unknown. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct task_info);
} listeners SEC(".maps");

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

struct tp_inet_sock_set_state {
	__u64 common;
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
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
	bpf_get_current_comm(&info->comm, sizeof(info->comm));
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
		e.hdr.task.ppid = e.hdr.task.pid;
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

static __always_inline void emit_sock(struct tp_inet_sock_set_state *ctx, __u32 kind, __u8 role,
				      struct task_info *owner, __u16 local_port)
{
	__u32 zero = 0;
	struct sock_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return;
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.boot_ns = bpf_ktime_get_boot_ns();
	if (owner)
		e->hdr.task = *owner;
	else
		__builtin_memset(&e->hdr.task, 0, sizeof(e->hdr.task));
	e->flags = owner ? AUSPEX_SOCK_OWNER_KNOWN : 0;
	e->sock = ctx->skaddr;
	e->netns = 0;
	e->family = ctx->family;
	e->protocol = ctx->protocol;
	e->role = role;
	e->local_port = local_port ? local_port : ctx->sport;
	e->remote_port = ctx->dport;
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->remote_addr, 0, sizeof(e->remote_addr));
	if (ctx->family == AF_INET) {
		__builtin_memcpy(e->local_addr, ctx->saddr, 4);
		__builtin_memcpy(e->remote_addr, ctx->daddr, 4);
	} else {
		__builtin_memcpy(e->local_addr, ctx->saddr_v6, 16);
		__builtin_memcpy(e->remote_addr, ctx->daddr_v6, 16);
	}
	emit(ctx, e, sizeof(*e), AUSPEX_DROP_RINGBUF_NET);
}

static __always_inline void remember(__u64 *sk, struct task_info *task, __u32 role, __u16 port)
{
	struct sock_owner owner = { .task = *task, .role = role, .port = port };

	if (bpf_map_update_elem(&sock_owners, sk, &owner, BPF_ANY))
		count(AUSPEX_DROP_SOCK_OWNERS_FULL);
}

/* The same transitions as the core_bpf network probe (network.bpf.c), read
 * from the tracepoint's arguments instead of the socket. */
SEC("tracepoint/sock/inet_sock_set_state")
int legacy_tcp_state(struct tp_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 key = ctx->skaddr;
	int oldstate = ctx->oldstate, newstate = ctx->newstate;
	__u32 lkey = ((__u32)ctx->family << 16) | ctx->sport;
	struct task_info owner;
	struct sock_owner *known;

	if (newstate == TCP_SYN_SENT) {
		current_task(&owner);
		remember(&key, &owner, AUSPEX_ROLE_CLIENT, 0);
	} else if (newstate == TCP_LISTEN) {
		current_task(&owner);
		remember(&key, &owner, AUSPEX_ROLE_SERVER, ctx->sport);
		if (bpf_map_update_elem(&listeners, &lkey, &owner, BPF_ANY))
			count(AUSPEX_DROP_LISTENERS_FULL);
		emit_sock(ctx, AUSPEX_EVENT_ENDPOINT_OPEN, AUSPEX_ROLE_SERVER, &owner, 0);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		if (known) {
			__u32 listener = ((__u32)ctx->family << 16) | known->port;

			emit_sock(ctx, AUSPEX_EVENT_ENDPOINT_CLOSE, AUSPEX_ROLE_SERVER, &known->task,
				  known->port);
			bpf_map_delete_elem(&listeners, &listener);
		} else {
			emit_sock(ctx, AUSPEX_EVENT_ENDPOINT_CLOSE, AUSPEX_ROLE_SERVER, NULL, 0);
		}
		bpf_map_delete_elem(&sock_owners, &key);
	} else if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		emit_sock(ctx, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_CLIENT,
			  known ? &known->task : NULL, 0);
	} else if (oldstate == TCP_SYN_SENT) {
		bpf_map_delete_elem(&sock_owners, &key);
	} else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct task_info *listener = bpf_map_lookup_elem(&listeners, &lkey);

		if (listener) {
			owner = *listener;
			remember(&key, &owner, AUSPEX_ROLE_SERVER, 0);
		}
		emit_sock(ctx, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_SERVER,
			  listener ? &owner : NULL, 0);
	} else if (oldstate == TCP_ESTABLISHED) {
		known = bpf_map_lookup_elem(&sock_owners, &key);
		emit_sock(ctx, AUSPEX_EVENT_CONNECTION_CLOSE,
			  known ? known->role : AUSPEX_ROLE_UNKNOWN, known ? &known->task : NULL, 0);
		bpf_map_delete_elem(&sock_owners, &key);
	}
	return 0;
}
