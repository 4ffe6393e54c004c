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

char LICENSE[] SEC("license") = "GPL";

enum udp_sock_flags {
	/* bind() asked for a specific port: a server's socket. */
	UDP_WANTS_ENDPOINT = 1,
	/* connect() was called; the open is reported once the kernel has
	 * given the socket its local port, right after the hook returns. */
	UDP_CONNECT_PENDING = 2,
};

struct udp_sock_state {
	struct task_info owner;
	/* Distinguishes this socket's flows from those of an earlier socket
	 * at the same address. */
	__u64 gen;
	__u32 flags;
	__u32 tries;
	/* The peer of the last datagram, already reported: repeated datagrams
	 * to or from one peer, the common case, stop here, before the shared
	 * (socket, peer) map. */
	__u8 last_addr[16];
	__u16 last_port;
	__u16 last_family;
	__u32 _pad;
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct udp_sock_state);
} udp_socks SEC(".maps");

struct udp_flow_key {
	__u64 gen;
	__u8 addr[16];
	__u16 port;
	__u16 family;
	__u32 _pad;
};

/* (socket, peer) pairs already reported: one open per pair, not one event
 * per datagram. LRU: a forgotten pair is reported again, never lost. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct udp_flow_key);
	__type(value, __u8);
} udp_flows SEC(".maps");

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
	bpf_ringbuf_submit(e, wakeup_flag());
}

/* The calling task; only meaningful in process context. Not
 * bpf_get_current_task_btf(): it arrived in 5.11, and fill_task reads
 * through BPF_CORE_READ anyway. */
static __always_inline void current_task(struct task_info *info)
{
	fill_task(info, (struct task_struct *)bpf_get_current_task(), UNTRUSTED);
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

static __always_inline void tcp_emit(const struct tcp_view *v, __u32 kind, __u8 role,
				     const struct task_info *owner, __u16 local_port)
{
	emit_sock(v->sk, kind, role, owner, local_port, TRUSTED);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	struct tcp_view v = { .sk = sk };

	if (BPF_CORE_READ_BITFIELD(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	tcp_state_change(&v, (__u64)sk, oldstate, newstate);
	return 0;
}

/*
 * The kernel socket behind a cgroup hook's bpf_sock, as a plain pointer for
 * CO-RE reads. The verifier forbids arithmetic on socket pointers, and
 * every field read is arithmetic; copying the pointer through a helper
 * makes it an ordinary number (allowed to privileged loaders).
 */
static __always_inline struct sock *kernel_sock(struct bpf_sock *bsk)
{
	struct bpf_sock *slot = bsk;
	__u64 address = 0;

	bpf_probe_read_kernel(&address, sizeof(address), &slot);
	return (struct sock *)address;
}

/*
 * UDP. A UDP socket's state is its entry in udp_socks, created the first
 * time a process-context hook sees it (so the owner is the process that
 * used it first) and deleted when it is released.
 */
static __always_inline struct udp_sock_state *udp_state(struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct udp_sock_state *st = bpf_map_lookup_elem(&udp_socks, &key);

	if (st)
		return st;

	struct udp_sock_state fresh = {};

	current_task(&fresh.owner);
	fresh.gen = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&udp_socks, &key, &fresh, BPF_NOEXIST) &&
	    !bpf_map_lookup_elem(&udp_socks, &key)) {
		count(AUSPEX_DROP_UDP_SOCKS_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&udp_socks, &key);
}

/* `family` is the hook's (a constant): a v4 hook may not even read the
 * v6 fields of its context. */
static __always_inline void flow_key_of(struct udp_flow_key *fk, struct bpf_sock_addr *ctx,
					__u64 gen, __u16 family)
{
	__builtin_memset(fk, 0, sizeof(*fk));
	fk->gen = gen;
	fk->port = bpf_ntohs(ctx->user_port);
	fk->family = family;
	if (family == AF_INET) {
		__u32 ip = ctx->user_ip4;

		__builtin_memcpy(fk->addr, &ip, 4);
	} else {
		__u32 ip6[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
				 ctx->user_ip6[3] };

		__builtin_memcpy(fk->addr, ip6, 16);
	}
}

/* The UDP socket of an address hook, its state, and the (socket, peer)
 * key of the address in the call; NULL for other sockets. */
static __always_inline struct udp_sock_state *udp_hook(struct bpf_sock_addr *ctx, __u16 family,
						       struct sock **sk, struct udp_flow_key *fk)
{
	struct bpf_sock *bsk = ctx->sk;

	if (!bsk || bsk->protocol != IPPROTO_UDP)
		return NULL;
	*sk = kernel_sock(bsk);
	struct udp_sock_state *st = udp_state(*sk);

	if (st)
		flow_key_of(fk, ctx, st->gen, family);
	return st;
}

/* A datagram to or from a peer named in the call: report the pair once. */
static __always_inline int udp_flow(struct bpf_sock_addr *ctx, __u8 role, __u16 family)
{
	struct sock *sk;
	struct udp_flow_key fk;
	struct udp_sock_state *st = udp_hook(ctx, family, &sk, &fk);
	__u8 seen = 1;

	if (!st)
		return 1;
	if (st->last_port == fk.port && st->last_family == fk.family &&
	    !__builtin_memcmp(st->last_addr, fk.addr, sizeof(fk.addr)))
		return 1;
	__builtin_memcpy(st->last_addr, fk.addr, sizeof(fk.addr));
	st->last_port = fk.port;
	st->last_family = fk.family;
	if (bpf_map_update_elem(&udp_flows, &fk, &seen, BPF_NOEXIST))
		return 1;

	struct sock_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(AUSPEX_DROP_RINGBUF_NET);
		return 1;
	}
	fill_sock(e, sk, AUSPEX_EVENT_CONNECTION_OPEN, role, UNTRUSTED);
	/* The peer is the datagram's, not the socket's (it has none). An
	 * IPv6 socket may talk to an IPv4 peer: write it IPv4-mapped. */
	if (e->family == AF_INET6 && family == AF_INET) {
		__builtin_memset(e->remote_addr, 0, 10);
		e->remote_addr[10] = 0xff;
		e->remote_addr[11] = 0xff;
		__builtin_memcpy(&e->remote_addr[12], fk.addr, 4);
	} else {
		__builtin_memcpy(e->remote_addr, fk.addr, sizeof(e->remote_addr));
	}
	e->remote_port = fk.port;
	set_owner(e, &st->owner);
	bpf_ringbuf_submit(e, wakeup_flag());
	return 1;
}

SEC("cgroup/sendmsg4")
int udp_sendmsg4(struct bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_CLIENT, AF_INET);
}

SEC("cgroup/sendmsg6")
int udp_sendmsg6(struct bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_CLIENT, AF_INET6);
}

SEC("cgroup/recvmsg4")
int udp_recvmsg4(struct bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_SERVER, AF_INET);
}

SEC("cgroup/recvmsg6")
int udp_recvmsg6(struct bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_SERVER, AF_INET6);
}

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

/* connect() on a UDP socket makes it a connection to one peer. The hook
 * runs before the kernel binds the socket, so the open is reported from a
 * timer a moment later (or at release, whichever comes first). */
static __always_inline int udp_connect(struct bpf_sock_addr *ctx, __u16 family)
{
	struct sock *sk;
	struct udp_flow_key fk;
	struct udp_sock_state *st = udp_hook(ctx, family, &sk, &fk);
	__u8 seen = 1;

	if (!st)
		return 1;
	/* Later datagrams from this peer are part of this connection. */
	bpf_map_update_elem(&udp_flows, &fk, &seen, BPF_ANY);

	st->flags |= UDP_CONNECT_PENDING;
	st->tries = 0;
	bpf_timer_init(&st->timer, &udp_socks, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&st->timer, udp_connect_done);
	bpf_timer_start(&st->timer, 0, 0);
	return 1;
}

SEC("cgroup/connect4")
int udp_connect4(struct bpf_sock_addr *ctx)
{
	return udp_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int udp_connect6(struct bpf_sock_addr *ctx)
{
	return udp_connect(ctx, AF_INET6);
}

/* bind() to a specific port marks a UDP server; post_bind reports it once
 * the bind succeeded. (post_bind alone cannot tell a requested port from an
 * ephemeral one.) */
static __always_inline int udp_bind(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *bsk = ctx->sk;

	if (!bsk || bsk->protocol != IPPROTO_UDP || !ctx->user_port)
		return 1;
	struct udp_sock_state *st = udp_state(kernel_sock(bsk));

	if (st)
		st->flags |= UDP_WANTS_ENDPOINT;
	return 1;
}

SEC("cgroup/bind4")
int udp_bind4(struct bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

SEC("cgroup/bind6")
int udp_bind6(struct bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

static __always_inline int udp_post_bind(struct bpf_sock *bsk)
{
	if (bsk->protocol != IPPROTO_UDP)
		return 1;
	struct sock *sk = kernel_sock(bsk);
	__u64 key = (__u64)sk;
	struct udp_sock_state *st = bpf_map_lookup_elem(&udp_socks, &key);

	if (st && (st->flags & UDP_WANTS_ENDPOINT))
		emit_sock(sk, AUSPEX_EVENT_ENDPOINT_OPEN, AUSPEX_ROLE_SERVER, &st->owner, 0, UNTRUSTED);
	return 1;
}

SEC("cgroup/post_bind4")
int udp_post_bind4(struct bpf_sock *bsk)
{
	return udp_post_bind(bsk);
}

SEC("cgroup/post_bind6")
int udp_post_bind6(struct bpf_sock *bsk)
{
	return udp_post_bind(bsk);
}

/* The socket is closed: report a connect still pending, then tell
 * userspace, which closes every flow and endpoint it reported for it. */
SEC("cgroup/sock_release")
int udp_release(struct bpf_sock *bsk)
{
	if (bsk->protocol != IPPROTO_UDP)
		return 1;
	struct sock *sk = kernel_sock(bsk);
	__u64 key = (__u64)sk;
	struct udp_sock_state *st = bpf_map_lookup_elem(&udp_socks, &key);

	if (!st)
		return 1;

	if (st->flags & UDP_CONNECT_PENDING)
		emit_sock(sk, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_CLIENT, &st->owner, 0, UNTRUSTED);
	emit_sock(sk, AUSPEX_EVENT_UDP_RELEASE, AUSPEX_ROLE_UNKNOWN, &st->owner, 0, UNTRUSTED);
	bpf_map_delete_elem(&udp_socks, &key);
	return 1;
}
