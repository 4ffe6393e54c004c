/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Who owns a TCP socket: the maps both network probes keep (each its own
 * copy, declared here once), and how an owner is written into an event.
 */
#ifndef AUSPEX_OWNERS_H
#define AUSPEX_OWNERS_H

#include <bpf/bpf_helpers.h>

#include "events.h"
#include "lib/counters.h"

/* The owner and role of a TCP socket the probe reported (or is about to),
 * so that events raised in softirq context, where `current` is whoever
 * happened to run, are attributed to the right process. */
struct sock_owner {
	struct task_info task;
	__u32 role;
	/* A listener's port: by the time a listener's close is traced the
	 * kernel may have released its port already. */
	__u16 port;
	__u16 _pad;
};

/* By the socket's address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

/* Who listens on a port: an accepted connection is attributed to the
 * listener's owner, as the kernel creates it in softirq context before
 * any process accepts it. netns is 0 where the probe cannot know it (the
 * legacy probe without BTF): its listeners are then keyed by port and
 * family alone. Userspace seeds it with listeners older than the probe. */
struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listener_key);
	__type(value, struct task_info);
} listeners SEC(".maps");

static __always_inline void remember_owner(__u64 *sk, const struct task_info *task, __u32 role,
					   __u16 port)
{
	struct sock_owner owner = { .task = *task, .role = role, .port = port };

	if (bpf_map_update_elem(&sock_owners, sk, &owner, BPF_ANY))
		count(AUSPEX_DROP_SOCK_OWNERS_FULL);
}

/* The event's task is the socket's owner, when known. */
static __always_inline void set_owner(struct sock_event *e, const struct task_info *owner)
{
	if (owner) {
		e->hdr.task = *owner;
		e->flags |= AUSPEX_SOCK_OWNER_KNOWN;
	} else {
		__builtin_memset(&e->hdr.task, 0, sizeof(e->hdr.task));
	}
}

#endif /* AUSPEX_OWNERS_H */
