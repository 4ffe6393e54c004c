/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What the kernel socket of a UDP hook tells, read with CO-RE: for the
 * objects that have BTF to relocate against (the core_bpf network probe,
 * the legacy method's CO-RE object). Its network namespace, and its local
 * address, which a release hook cannot read from its bpf_sock.
 */
#ifndef AUSPEX_UDP_CORE_H
#define AUSPEX_UDP_CORE_H

#include <bpf/bpf_core_read.h>

#include "events.h"
#include "lib/constants.h"

static __always_inline void udp_read_sock(struct sock_event *e, struct sock *sk)
{
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (e->family == AF_INET)
		*(__u32 *)e->local_addr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
	else
		BPF_CORE_READ_INTO(&e->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
}

#endif /* AUSPEX_UDP_CORE_H */
