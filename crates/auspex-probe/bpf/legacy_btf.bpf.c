// SPDX-License-Identifier: GPL-2.0-only
/*
 * The legacy (ebpf) method's programs for when some BTF exists (the
 * kernel's, or a --btf file): the same classic tracepoints as legacy.bpf.c,
 * but reading the current task with CO-RE, so exec events carry the
 * resolved executable, the arguments and the parent, and exits their exact
 * status without the exit_group syscall tracepoint, and TCP and UDP events
 * their network namespace (and a connected UDP socket its local address).
 * A separate object: libbpf refuses any object with CO-RE relocations when
 * no BTF is at hand. It shares the legacy object's maps (userspace passes
 * their fds).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "events.h"
#include "lib/counters.h"
#include "lib/scratch.h"
#include "lib/perf_output.h"
#include "lib/task.h"
#include "lib/exec.h"
#include "lib/exit_once.h"
#include "lib/legacy_tcp.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tracepoint/sched/sched_process_exec")
int legacy_exec_btf(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 zero = 0;
	struct exec_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return 0;
	/* The new image is current's: its mm, its executable file. */
	__u32 size = fill_exec(e, task, BPF_CORE_READ(task, mm, exe_file), 0);

	if (size > sizeof(*e))
		return 0;
	fill_header(&e->hdr, task, AUSPEX_EVENT_EXEC, size, UNTRUSTED);
	emit(ctx, e, size, AUSPEX_DROP_RINGBUF_EXEC);
	return 0;
}

/*
 * A fork, with the child read from the kernel: its start and its real
 * parent, which the classic tracepoint task_newtask does not give (reading
 * them from /proc/PID/stat was 38 % of the agent's CPU in a fork+exec storm
 * with this method, perf). A raw tracepoint (4.17) hands over the child's
 * task; no BTF is needed to attach it, only for the CO-RE reads.
 */
SEC("raw_tp/sched_process_fork")
int legacy_fork_btf(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (void *)ctx->args[0];
	struct task_struct *child = (void *)ctx->args[1];
	struct fork_event e = {};

	fill_header(&e.hdr, child, AUSPEX_EVENT_FORK, sizeof(e), UNTRUSTED);
	e.parent_pid = BPF_CORE_READ(parent, tgid);
	e.parent_tid = BPF_CORE_READ(parent, pid);
	e.is_thread = BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid);
	emit(ctx, &e, sizeof(e), AUSPEX_DROP_RINGBUF_FORK);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int legacy_exit_btf(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();

	if (!reports_process_exit(task))
		return 0;
	struct exit_event e = {};

	fill_header(&e.hdr, task, AUSPEX_EVENT_EXIT, sizeof(e), UNTRUSTED);
	e.exit_status = BPF_CORE_READ(task, exit_code);
	emit(ctx, &e, sizeof(e), AUSPEX_DROP_RINGBUF_EXIT);
	return 0;
}

/* The calling task, with its parent (the helpers alone do not tell it).
 * For the UDP hooks: cgroup programs, which may not call
 * bpf_get_current_task_btf(). */
static __always_inline void current_task(struct task_info *info)
{
	fill_task(info, (struct task_struct *)bpf_get_current_task(), UNTRUSTED);
}

/* The TCP program is a tracing one: direct reads where the kernel allows
 * them (lib/task.h). */
static __always_inline void tcp_current_task(struct task_info *info)
{
	fill_current_task(info);
}

/* TCP: lib/legacy_tcp.h with the socket's network namespace. */
static __always_inline __u32 legacy_netns(__u64 skaddr)
{
	struct sock *sk = (struct sock *)skaddr;

	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

SEC("tracepoint/sock/inet_sock_set_state")
int legacy_tcp_state_btf(struct tp_inet_sock_set_state *ctx)
{
	return legacy_tcp(ctx);
}

/* UDP: lib/udp.h with CO-RE reads of the kernel socket. */
static __always_inline void udp_output(void *ctx, struct sock_event *e)
{
	emit(ctx, e, sizeof(*e), AUSPEX_DROP_RINGBUF_NET);
}

#include "lib/udp.h"
#include "lib/udp_core.h"
