/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * UDP from cgroup socket hooks, written once for both methods: the
 * core_bpf network probe, and the legacy (ebpf) objects with and without
 * CO-RE. The hooks' contexts (struct uapi_bpf_sock_addr, struct bpf_sock) are
 * stable UAPI that the kernel rewrites itself, so nothing here needs BTF;
 * what only the kernel socket tells (its network namespace, its local
 * address at release) comes through udp_read_sock(), which the including
 * object defines: with CO-RE reads where it has them, as a no-op where not.
 *
 * The including object defines, before including this header:
 *   udp_output(ctx, e)       sends a sock_event (ring buffer or perf array)
 *   udp_read_sock(e, sk)     fills what the kernel socket says (netns, the
 *                            local address): CO-RE, or nothing
 *   current_task(info)       the calling task (process context)
 * and AUSPEX_UDP_TIMER when its udp_sock_state carries a BPF timer (the
 * core probe on 5.15+; a map value with a bpf_timer needs kernel support).
 *
 * Which kernel feature each part needs:
 *   sendmsg4/6, connect4/6, bind4/6, post_bind4/6   Linux 4.17-4.18
 *   recvmsg4/6                                      Linux 5.2
 *   sock_release                                    Linux 5.9
 *   connected UDP reported right after connect()    BPF timers, Linux 5.15
 *   connected UDP reported at release instead       the above only
 * Every part attaches to the root of the cgroup v2 hierarchy.
 */
#ifndef AUSPEX_UDP_H
#define AUSPEX_UDP_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "events.h"
#include "lib/constants.h"
#include "lib/counters.h"
#include "lib/owners.h"

/*
 * The hooks' contexts, with their UAPI layouts (include/uapi/linux/bpf.h),
 * declared here rather than taken from vmlinux.h: vmlinux.h marks every
 * struct preserve_access_index, which makes each field access a CO-RE
 * relocation, and libbpf refuses those without kernel BTF (the BTF-less
 * kernel of the matrix found it: ESRCH at load). The layouts are kernel
 * ABI, and the kernel rewrites each context access itself.
 */
struct uapi_bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;		/* host byte order */
	/* Network byte order in the first two bytes; a __u32 before 5.19,
	 * which allows only 4-byte loads of it. */
	__u32 dst_port;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

struct uapi_bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;		/* network byte order */
	__u32 user_ip6[4];
	__u32 user_port;	/* network byte order */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	union {
		struct uapi_bpf_sock *sk;
		__u64 : 64;
	} __attribute__((aligned(8)));
};

enum udp_sock_flags {
	/* bind() asked for a specific port: a server's socket. */
	UDP_WANTS_ENDPOINT = 1,
	/* connect() was called; the open is reported once the kernel has
	 * given the socket its local port (from a timer right after the hook
	 * returns, or at release). */
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
#ifdef AUSPEX_UDP_TIMER
	struct bpf_timer timer;
#endif
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

static __always_inline void udp_output(void *ctx, struct sock_event *e);
static __always_inline void udp_read_sock(struct sock_event *e, struct sock *sk);
static __always_inline void current_task(struct task_info *info);

/*
 * The kernel socket behind a cgroup hook's bpf_sock, as a plain pointer:
 * the socket's identity (the sock_id userspace pairs opens and closes by)
 * and what CO-RE reads start from. The verifier forbids arithmetic on
 * socket pointers; copying the pointer through a helper makes it an
 * ordinary number (allowed to privileged loaders).
 */
static __always_inline struct sock *kernel_sock(struct uapi_bpf_sock *bsk)
{
	struct uapi_bpf_sock *slot = bsk;
	__u64 address = 0;

	bpf_probe_read_kernel(&address, sizeof(address), &slot);
	return (struct sock *)address;
}

/* bpf_sock.dst_port: a 4-byte load, the only one kernels before 5.19
 * allow; the port (network order) is in its first two bytes. */
static __always_inline __u16 udp_dst_port(struct uapi_bpf_sock *bsk)
{
	return bpf_ntohs((__u16)*(volatile __u32 *)&bsk->dst_port);
}

/* A record about `sk`: what the kernel socket says (udp_read_sock), the
 * callers add what their context tells. */
static __always_inline void udp_event(struct sock_event *e, struct sock *sk, __u32 kind,
				      __u8 role, __u16 family)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.kind = kind;
	e->hdr.size = sizeof(*e);
	e->hdr.boot_ns = bpf_ktime_get_boot_ns();
	e->sock = (__u64)sk;
	e->family = family;
	e->protocol = IPPROTO_UDP;
	e->role = role;
	udp_read_sock(e, sk);
}

/* The local address of a socket reached from a sock_addr hook (ctx->sk:
 * every field is readable there). */
static __always_inline void udp_local_of(struct sock_event *e, struct uapi_bpf_sock *bsk)
{
	e->local_port = bsk->src_port;
	if (e->family == AF_INET) {
		__u32 ip = bsk->src_ip4;

		__builtin_memcpy(e->local_addr, &ip, 4);
	} else {
		__u32 ip6[4] = { bsk->src_ip6[0], bsk->src_ip6[1], bsk->src_ip6[2],
				 bsk->src_ip6[3] };

		__builtin_memcpy(e->local_addr, ip6, 16);
	}
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
static __always_inline void flow_key_of(struct udp_flow_key *fk, struct uapi_bpf_sock_addr *ctx,
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
static __always_inline struct udp_sock_state *udp_hook(struct uapi_bpf_sock_addr *ctx, __u16 family,
						       struct sock **sk, struct udp_flow_key *fk)
{
	struct uapi_bpf_sock *bsk = ctx->sk;

	if (!bsk || bsk->protocol != IPPROTO_UDP)
		return NULL;
	*sk = kernel_sock(bsk);
	struct udp_sock_state *st = udp_state(*sk);

	if (st)
		flow_key_of(fk, ctx, st->gen, family);
	return st;
}

/* A datagram to or from a peer named in the call: report the pair once. */
static __always_inline int udp_flow(struct uapi_bpf_sock_addr *ctx, __u8 role, __u16 family)
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

	struct uapi_bpf_sock *bsk = ctx->sk;

	if (!bsk)
		return 1;
	struct sock_event e;

	udp_event(&e, sk, AUSPEX_EVENT_CONNECTION_OPEN, role, bsk->family);
	udp_local_of(&e, bsk);
	/* The peer is the datagram's, not the socket's (it has none). An
	 * IPv6 socket may talk to an IPv4 peer: write it IPv4-mapped. */
	if (e.family == AF_INET6 && family == AF_INET) {
		__builtin_memset(e.remote_addr, 0, 10);
		e.remote_addr[10] = 0xff;
		e.remote_addr[11] = 0xff;
		__builtin_memcpy(&e.remote_addr[12], fk.addr, 4);
	} else {
		__builtin_memcpy(e.remote_addr, fk.addr, sizeof(e.remote_addr));
	}
	e.remote_port = fk.port;
	set_owner(&e, &st->owner);
	udp_output(ctx, &e);
	return 1;
}

SEC("cgroup/sendmsg4")
int udp_sendmsg4(struct uapi_bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_CLIENT, AF_INET);
}

SEC("cgroup/sendmsg6")
int udp_sendmsg6(struct uapi_bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_CLIENT, AF_INET6);
}

SEC("cgroup/recvmsg4")
int udp_recvmsg4(struct uapi_bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_SERVER, AF_INET);
}

SEC("cgroup/recvmsg6")
int udp_recvmsg6(struct uapi_bpf_sock_addr *ctx)
{
	return udp_flow(ctx, AUSPEX_ROLE_SERVER, AF_INET6);
}

/* connect() on a UDP socket makes it a connection to one peer. The hook
 * runs before the kernel binds the socket, so the open is reported later:
 * at release here, from a timer where the object has one. Returns the
 * socket's state for that, NULL for other sockets. */
static __always_inline struct udp_sock_state *udp_connect_pending(struct uapi_bpf_sock_addr *ctx,
								 __u16 family)
{
	struct sock *sk;
	struct udp_flow_key fk;
	struct udp_sock_state *st = udp_hook(ctx, family, &sk, &fk);
	__u8 seen = 1;

	if (!st)
		return NULL;
	/* Later datagrams from this peer are part of this connection. */
	bpf_map_update_elem(&udp_flows, &fk, &seen, BPF_ANY);
	st->flags |= UDP_CONNECT_PENDING;
	st->tries = 0;
	return st;
}

/* The connected-UDP hooks without a timer: the open waits for release. */
SEC("cgroup/connect4")
int udp_connect4_late(struct uapi_bpf_sock_addr *ctx)
{
	udp_connect_pending(ctx, AF_INET);
	return 1;
}

SEC("cgroup/connect6")
int udp_connect6_late(struct uapi_bpf_sock_addr *ctx)
{
	udp_connect_pending(ctx, AF_INET6);
	return 1;
}

/* bind() to a specific port marks a UDP server; post_bind reports it once
 * the bind succeeded. (post_bind alone cannot tell a requested port from an
 * ephemeral one.) */
static __always_inline int udp_bind(struct uapi_bpf_sock_addr *ctx)
{
	struct uapi_bpf_sock *bsk = ctx->sk;

	if (!bsk || bsk->protocol != IPPROTO_UDP || !ctx->user_port)
		return 1;
	struct udp_sock_state *st = udp_state(kernel_sock(bsk));

	if (st)
		st->flags |= UDP_WANTS_ENDPOINT;
	return 1;
}

SEC("cgroup/bind4")
int udp_bind4(struct uapi_bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

SEC("cgroup/bind6")
int udp_bind6(struct uapi_bpf_sock_addr *ctx)
{
	return udp_bind(ctx);
}

/* A post_bind hook may read the source fields of its own family only. */
static __always_inline int udp_post_bind(struct uapi_bpf_sock *bsk, __u16 family)
{
	if (bsk->protocol != IPPROTO_UDP)
		return 1;
	struct sock *sk = kernel_sock(bsk);
	__u64 key = (__u64)sk;
	struct udp_sock_state *st = bpf_map_lookup_elem(&udp_socks, &key);

	if (!st || !(st->flags & UDP_WANTS_ENDPOINT))
		return 1;
	struct sock_event e;

	udp_event(&e, sk, AUSPEX_EVENT_ENDPOINT_OPEN, AUSPEX_ROLE_SERVER, family);
	e.local_port = bsk->src_port;
	if (family == AF_INET) {
		__u32 ip = bsk->src_ip4;

		__builtin_memcpy(e.local_addr, &ip, 4);
	} else {
		__u32 ip6[4] = { bsk->src_ip6[0], bsk->src_ip6[1], bsk->src_ip6[2],
				 bsk->src_ip6[3] };

		__builtin_memcpy(e.local_addr, ip6, 16);
	}
	set_owner(&e, &st->owner);
	udp_output(bsk, &e);
	return 1;
}

SEC("cgroup/post_bind4")
int udp_post_bind4(struct uapi_bpf_sock *bsk)
{
	return udp_post_bind(bsk, AF_INET);
}

SEC("cgroup/post_bind6")
int udp_post_bind6(struct uapi_bpf_sock *bsk)
{
	return udp_post_bind(bsk, AF_INET6);
}

/* The socket is closed: report a connect still pending, then tell
 * userspace, which closes every flow and endpoint it reported for it.
 * A release hook may read the socket's destination, not its source: the
 * local address of a pending connect is what udp_read_sock() tells. */
SEC("cgroup/sock_release")
int udp_release(struct uapi_bpf_sock *bsk)
{
	if (bsk->protocol != IPPROTO_UDP)
		return 1;
	struct sock *sk = kernel_sock(bsk);
	__u64 key = (__u64)sk;
	struct udp_sock_state *st = bpf_map_lookup_elem(&udp_socks, &key);

	if (!st)
		return 1;
	__u16 family = bsk->family;
	struct sock_event e;

	if (st->flags & UDP_CONNECT_PENDING) {
		udp_event(&e, sk, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_CLIENT, family);
		e.remote_port = udp_dst_port(bsk);
		if (family == AF_INET) {
			__u32 ip = bsk->dst_ip4;

			__builtin_memcpy(e.remote_addr, &ip, 4);
		} else {
			__u32 ip6[4] = { bsk->dst_ip6[0], bsk->dst_ip6[1], bsk->dst_ip6[2],
					 bsk->dst_ip6[3] };

			__builtin_memcpy(e.remote_addr, ip6, 16);
		}
		set_owner(&e, &st->owner);
		/* A connect that failed or was undone leaves no peer. */
		if (e.remote_port)
			udp_output(bsk, &e);
	}
	udp_event(&e, sk, AUSPEX_EVENT_UDP_RELEASE, AUSPEX_ROLE_UNKNOWN, family);
	set_owner(&e, &st->owner);
	udp_output(bsk, &e);
	bpf_map_delete_elem(&udp_socks, &key);
	return 1;
}

#endif /* AUSPEX_UDP_H */
