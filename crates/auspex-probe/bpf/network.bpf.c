// SPDX-License-Identifier: GPL-2.0-only
/*
 * Network probe of the core_bpf method: TCP connections and listeners from
 * the inet_sock_set_state tracepoint, UDP flows and bound UDP sockets from
 * cgroup socket hooks. No syscall hook of any kind: TCP pays only on state
 * changes, UDP only on sends and receives that carry an address, binds,
 * connects and closes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "events.h"
#include "lib/constants.h"
#include "lib/output.h"
#include "lib/owners.h"
#include "lib/reads.h"
#include "lib/task.h"
#include "lib/tcp_state.h"

/* This probe's UDP state keeps a BPF timer (see lib/udp.h). */
#define AUSPEX_UDP_TIMER

char LICENSE[] SEC("license") = "GPL";

static __always_inline void fill_sock(struct sock_event *e, struct sock *sk, __u32 kind,
				      __u8 role, bool trusted)
{
	struct sock_common *c = &sk->__sk_common;

	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.boot_ns = bpf_ktime_get_boot_ns();
	e->sock = (__u64)sk;
	e->netns = KREAD(trusted, c->skc_net.net->ns.inum, sk, __sk_common.skc_net.net, ns.inum);
	e->family = KREAD(trusted, c->skc_family, sk, __sk_common.skc_family);
	/* A bitfield before 5.6, a u16 since: the bitfield reads handle both. */
	e->protocol = trusted ? BPF_CORE_READ_BITFIELD(sk, sk_protocol)
			      : BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	e->role = role;
	e->local_port = KREAD(trusted, c->skc_num, sk, __sk_common.skc_num);
	e->remote_port = bpf_ntohs(KREAD(trusted, c->skc_dport, sk, __sk_common.skc_dport));
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->remote_addr, 0, sizeof(e->remote_addr));
	if (e->family == AF_INET) {
		*(__u32 *)e->local_addr =
			KREAD(trusted, c->skc_rcv_saddr, sk, __sk_common.skc_rcv_saddr);
		*(__u32 *)e->remote_addr = KREAD(trusted, c->skc_daddr, sk, __sk_common.skc_daddr);
	} else if (trusted) {
		__builtin_memcpy(e->local_addr, &c->skc_v6_rcv_saddr, sizeof(e->local_addr));
		__builtin_memcpy(e->remote_addr, &c->skc_v6_daddr, sizeof(e->remote_addr));
	} else {
		BPF_CORE_READ_INTO(&e->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->remote_addr, sk, __sk_common.skc_v6_daddr);
	}
	e->flags = 0;
}

/* `local_port`: see tcp_emit. */
static __always_inline void emit_sock(struct sock *sk, __u32 kind, __u8 role,
				      const struct task_info *owner, __u16 local_port, bool trusted)
{
	struct sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AUSPEX_DROP_RINGBUF_NET);
		return;
	}
	fill_sock(e, sk, kind, role, trusted);
	set_owner(e, owner);
	if (local_port)
		e->local_port = local_port;
	bpf_ringbuf_submit(e, wakeup_flag(sizeof(*e)));
}

/* The calling task, for the UDP hooks (cgroup programs, which may not call
 * bpf_get_current_task_btf()); only meaningful in process context. */
static __always_inline void current_task(struct task_info *info)
{
	fill_task(info, (struct task_struct *)bpf_get_current_task(), UNTRUSTED);
}

/* The TCP probe is a tracing program: direct reads where the kernel allows
 * them (lib/task.h). */
static __always_inline void tcp_current_task(struct task_info *info)
{
	fill_current_task(info);
}

/* TCP: the state machine of lib/tcp_state.h over the socket itself, which
 * a tp_btf program reads directly. */
struct tcp_view {
	struct sock *sk;
};

static __always_inline struct listener_key tcp_listener_of(const struct tcp_view *v)
{
	struct sock_common *c = &v->sk->__sk_common;
	struct listener_key key = {
		.netns = c->skc_net.net->ns.inum,
		.port = c->skc_num,
		.family = c->skc_family,
	};
	return key;
}

/*
 * A connection that goes to CLOSE (a reset, sent or received) is traced
 * after the kernel released its port: tcp_set_state() calls inet_put_port(),
 * which zeroes inet_num (skc_num), before inet_sk_state_store() fires the
 * tracepoint (4.16 to 6.18 alike). inet_sport, the port in the connection's
 * headers, is left alone until the socket is reused; it is what the classic
 * tracepoint reports as `sport`, which is why the ebpf method never showed
 * the port as 0 (tests/network_events.rs). Read, with one
 * bpf_probe_read_kernel() (inet_sock lies beyond the struct sock the
 * verifier knows), only when skc_num is 0: an open's port is always there.
 */
static __always_inline void tcp_emit(const struct tcp_view *v, __u32 kind, __u8 role,
				     const struct task_info *owner, __u16 local_port)
{
	/* A variable of its own: in BPF_CORE_READ's argument, v->sk would be
	 * a relocation against struct tcp_view, which the kernel lacks. */
	struct inet_sock *inet = (struct inet_sock *)v->sk;

	if (!local_port && !v->sk->__sk_common.skc_num)
		local_port = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	emit_sock(v->sk, kind, role, owner, local_port, TRUSTED);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	struct tcp_view v = { .sk = sk };

	/* From the arguments alone, before reading the socket: half of a
	 * connection's changes carry no news (lib/tcp_state.h). */
	if (!tcp_state_news(oldstate, newstate))
		return 0;
	if (BPF_CORE_READ_BITFIELD(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	tcp_state_change(&v, (__u64)sk, oldstate, newstate);
	return 0;
}

/*
 * UDP: the cgroup socket hooks of lib/udp.h, with CO-RE reads of the
 * kernel socket, and connected UDP reported from a BPF timer right after
 * connect() where the kernel has timers (5.15+; userspace loads the
 * *_late hooks of lib/udp.h instead where it has not).
 */
static __always_inline void udp_output(void *ctx, struct sock_event *e)
{
	if (bpf_ringbuf_output(&events, e, sizeof(*e), wakeup_flag(sizeof(*e))))
		count(AUSPEX_DROP_RINGBUF_NET);
}

#include "lib/udp.h"
#include "lib/udp_core.h"

/* Runs from the timer armed by connect: reports the connected socket once
 * the kernel has finished connect() and given it a local port. */
static int udp_connect_done(void *map, __u64 *key, struct udp_sock_state *st)
{
	struct sock *sk = (struct sock *)*key;

	if (!(st->flags & UDP_CONNECT_PENDING))
		return 0;
	if (BPF_CORE_READ(sk, __sk_common.skc_num) && BPF_CORE_READ(sk, __sk_common.skc_dport)) {
		st->flags &= ~UDP_CONNECT_PENDING;
		emit_sock(sk, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_CLIENT, &st->owner, 0, UNTRUSTED);
	} else if (++st->tries < 100) {
		bpf_timer_start(&st->timer, 1000000 /* 1 ms */, 0);
	} else {
		st->flags &= ~UDP_CONNECT_PENDING;
		count(AUSPEX_DROP_UDP_CONNECT_UNRESOLVED);
	}
	return 0;
}

/* The open is reported from a timer a moment later (or at release,
 * whichever comes first). */
static __always_inline int udp_connect(struct uapi_bpf_sock_addr *ctx, __u16 family)
{
	struct udp_sock_state *st = udp_connect_pending(ctx, family);

	if (!st)
		return 1;
	bpf_timer_init(&st->timer, &udp_socks, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&st->timer, udp_connect_done);
	bpf_timer_start(&st->timer, 0, 0);
	return 1;
}

SEC("cgroup/connect4")
int udp_connect4(struct uapi_bpf_sock_addr *ctx)
{
	return udp_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int udp_connect6(struct uapi_bpf_sock_addr *ctx)
{
	return udp_connect(ctx, AF_INET6);
}
