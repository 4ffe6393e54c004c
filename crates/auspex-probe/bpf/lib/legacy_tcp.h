/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * TCP for the legacy (ebpf) objects: the state machine of lib/tcp_state.h
 * over the arguments of the classic tracepoint sock/inet_sock_set_state,
 * which describe the socket without reading it. The one thing they lack is
 * the network namespace: the including object defines
 *   legacy_netns(skaddr)   the socket's netns inode (CO-RE), or 0 without BTF
 * and attaches a program that calls legacy_tcp(ctx).
 */
#ifndef AUSPEX_LEGACY_TCP_H
#define AUSPEX_LEGACY_TCP_H

#include "events.h"
#include "lib/constants.h"
#include "lib/perf_output.h"
#include "lib/scratch.h"
#include "lib/tcp_state.h"

/* /sys/kernel/tracing/events/sock/inet_sock_set_state/format */
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

static __always_inline __u32 legacy_netns(__u64 skaddr);

struct tcp_view {
	struct tp_inet_sock_set_state *args;
	/* legacy_netns(), read once per run: two bpf_probe_read_kernel()
	 * calls with CO-RE, which an accepted connection's open needed twice
	 * (its listener's key, its record). */
	__u32 netns;
};

static __always_inline struct listener_key tcp_listener_of(const struct tcp_view *v)
{
	/* Without BTF the namespace is 0: keyed by port and family. */
	struct listener_key key = {
		.netns = v->netns,
		.port = v->args->sport,
		.family = v->args->family,
	};

	return key;
}

static __always_inline void tcp_emit(const struct tcp_view *v, __u32 kind, __u8 role,
				     const struct task_info *owner, __u16 local_port)
{
	struct tp_inet_sock_set_state *args = v->args;
	__u32 zero = 0;
	struct sock_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return;
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.boot_ns = bpf_ktime_get_boot_ns();
	e->flags = 0;
	set_owner(e, owner);
	e->sock = args->skaddr;
	e->netns = v->netns;
	e->family = args->family;
	e->protocol = args->protocol;
	e->role = role;
	e->local_port = local_port ? local_port : args->sport;
	e->remote_port = args->dport;
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->remote_addr, 0, sizeof(e->remote_addr));
	if (args->family == AF_INET) {
		__builtin_memcpy(e->local_addr, args->saddr, 4);
		__builtin_memcpy(e->remote_addr, args->daddr, 4);
	} else {
		__builtin_memcpy(e->local_addr, args->saddr_v6, 16);
		__builtin_memcpy(e->remote_addr, args->daddr_v6, 16);
	}
	emit(args, e, sizeof(*e), AUSPEX_DROP_RINGBUF_NET);
}

static __always_inline int legacy_tcp(struct tp_inet_sock_set_state *ctx)
{
	struct tcp_view v = { .args = ctx };

	if (!tcp_state_news(ctx->oldstate, ctx->newstate))
		return 0;
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	/* Every change with news but connect()'s reports the socket or keys
	 * its listener by it. */
	if (ctx->newstate != TCP_SYN_SENT)
		v.netns = legacy_netns(ctx->skaddr);
	tcp_state_change(&v, ctx->skaddr, ctx->oldstate, ctx->newstate);
	return 0;
}

#endif /* AUSPEX_LEGACY_TCP_H */
