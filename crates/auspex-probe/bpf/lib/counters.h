/* SPDX-License-Identifier: GPL-2.0-only */
/* What every probe counts instead of losing silently: see enum auspex_counter. */
#ifndef AUSPEX_COUNTERS_H
#define AUSPEX_COUNTERS_H

#include "events.h"

/* Per CPU so that counting never contends; userspace sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AUSPEX_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	/* The result is unused, so clang emits a plain atomic add rather than
	 * a fetch-add, which kernels before 5.12 reject. Atomic because a
	 * program may be preempted by another on the same CPU. */
	if (value)
		__sync_fetch_and_add(value, 1);
}

#endif /* AUSPEX_COUNTERS_H */
