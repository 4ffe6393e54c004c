/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef AUSPEX_OWNERS_H
#define AUSPEX_OWNERS_H

#include "events.h"

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

#endif /* AUSPEX_OWNERS_H */
