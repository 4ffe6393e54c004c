/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The TCP state machine of both network probes, written once. Each probe
 * sees a socket's state change its own way: core_bpf reads the socket
 * itself (tp_btf/inet_sock_set_state), the legacy probe the arguments of
 * the classic tracepoint sock/inet_sock_set_state, without CO-RE. What
 * differs is behind a small view the probe defines before calling
 * tcp_state_change():
 *
 *   struct tcp_view          the probe's view of the socket
 *   tcp_listener_of(v)       the socket's key in `listeners`
 *   tcp_emit(v, ...)         sends a sock_event about the socket
 *   tcp_current_task(info)   the calling task (process context only)
 *
 * They are declared below and defined by the probe; each is read only where
 * the transition needs it, so the changes nobody reports (most of a
 * connection's ten or so) cost a comparison or two. Nothing here reads
 * kernel memory, so the legacy object stays free of CO-RE relocations.
 */
#ifndef AUSPEX_TCP_STATE_H
#define AUSPEX_TCP_STATE_H

#include "events.h"
#include "lib/counters.h"
#include "lib/owners.h"

struct tcp_view;

/* The socket's (network namespace, local port, family). */
static __always_inline struct listener_key tcp_listener_of(const struct tcp_view *v);

/* Sends a record of `kind` about the socket, owned by `owner` (NULL:
 * unknown). A `local_port` other than 0 replaces the socket's own, which a
 * closing listener may have released already. */
static __always_inline void tcp_emit(const struct tcp_view *v, __u32 kind, __u8 role,
				     const struct task_info *owner, __u16 local_port);

static __always_inline void tcp_current_task(struct task_info *info);

/*
 * Whether a change from `oldstate` to `newstate` is one tcp_state_change()
 * acts on (the list below). About half of a connection's ten or so changes
 * are not (LISTEN -> SYN_RECV, FIN_WAIT1 -> FIN_WAIT2, FIN_WAIT2 -> CLOSE,
 * CLOSE_WAIT -> LAST_ACK, LAST_ACK -> CLOSE): each probe asks this first,
 * before reading the socket or the task, so they cost two comparisons.
 * Kept in step with tcp_state_change() (the live tests check every
 * transition that is reported).
 */
static __always_inline bool tcp_state_news(int oldstate, int newstate)
{
	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)
		return true;
	if (oldstate == TCP_SYN_SENT || oldstate == TCP_ESTABLISHED)
		return true;
	return (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) ||
	       (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED);
}

/*
 * The transitions that matter, and the context each runs in:
 *   CLOSE -> SYN_SENT       connect(), process context: remember the owner
 *   SYN_SENT -> ESTABLISHED handshake done (often softirq): client open
 *   SYN_SENT -> CLOSE       refused or failed: forget, report nothing
 *   CLOSE -> LISTEN         listen(), process context: endpoint open
 *   LISTEN -> CLOSE         endpoint close (LISTEN -> SYN_RECV is a new
 *                           request socket cloned from the listener)
 *   SYN_RECV -> ESTABLISHED a connection to a listener completes (softirq):
 *                           server open, owned by the listener's owner
 *   ESTABLISHED -> any      either side closed or reset: connection close
 * `sk` is the socket's address: its identity, never read.
 */
static __always_inline void tcp_state_change(const struct tcp_view *v, __u64 sk, int oldstate,
					     int newstate)
{
	struct task_info owner;
	struct sock_owner *known;

	if (newstate == TCP_SYN_SENT) {
		tcp_current_task(&owner);
		remember_owner(&sk, &owner, AUSPEX_ROLE_CLIENT, 0);
	} else if (newstate == TCP_LISTEN) {
		struct listener_key lkey = tcp_listener_of(v);

		tcp_current_task(&owner);
		remember_owner(&sk, &owner, AUSPEX_ROLE_SERVER, lkey.port);
		if (bpf_map_update_elem(&listeners, &lkey, &owner, BPF_ANY))
			count(AUSPEX_DROP_LISTENERS_FULL);
		tcp_emit(v, AUSPEX_EVENT_ENDPOINT_OPEN, AUSPEX_ROLE_SERVER, &owner, 0);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		known = bpf_map_lookup_elem(&sock_owners, &sk);
		tcp_emit(v, AUSPEX_EVENT_ENDPOINT_CLOSE, AUSPEX_ROLE_SERVER,
			 known ? &known->task : NULL, known ? known->port : 0);
		if (known) {
			struct listener_key lkey = tcp_listener_of(v);

			lkey.port = known->port;
			bpf_map_delete_elem(&listeners, &lkey);
		}
		bpf_map_delete_elem(&sock_owners, &sk);
	} else if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
		known = bpf_map_lookup_elem(&sock_owners, &sk);
		tcp_emit(v, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_CLIENT,
			 known ? &known->task : NULL, 0);
	} else if (oldstate == TCP_SYN_SENT) {
		bpf_map_delete_elem(&sock_owners, &sk);
	} else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct listener_key lkey = tcp_listener_of(v);
		struct task_info *listener = bpf_map_lookup_elem(&listeners, &lkey);

		if (listener) {
			owner = *listener;
			remember_owner(&sk, &owner, AUSPEX_ROLE_SERVER, 0);
		}
		tcp_emit(v, AUSPEX_EVENT_CONNECTION_OPEN, AUSPEX_ROLE_SERVER,
			 listener ? &owner : NULL, 0);
	} else if (oldstate == TCP_ESTABLISHED) {
		/* The role is unknown only for a connection that predates the
		 * probe. */
		known = bpf_map_lookup_elem(&sock_owners, &sk);
		tcp_emit(v, AUSPEX_EVENT_CONNECTION_CLOSE,
			 known ? known->role : AUSPEX_ROLE_UNKNOWN, known ? &known->task : NULL, 0);
		bpf_map_delete_elem(&sock_owners, &sk);
	}
}

#endif /* AUSPEX_TCP_STATE_H */
