/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Where every probe of the core_bpf method sends its records (a ring
 * buffer), and when it wakes the reader. Userspace sizes `events` before
 * load.
 */
#ifndef AUSPEX_OUTPUT_H
#define AUSPEX_OUTPUT_H

#include "events.h"
#include "lib/counters.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/*
 * Set by userspace before load. Waking the reader is the costliest part of
 * sending a record: an irq_work whose self-IPI, in a virtual machine, costs
 * more than everything else a probe does (measured here with
 * kernel.bpf_stats_enabled: fork 13.6 µs per record with a wakeup each,
 * 0.5 µs without; exec 18.5 µs vs 1.5 µs). So the reader is woken only
 * once this many bytes wait; below that it finds the records on its next
 * timed poll.
 */
const volatile __u64 wakeup_bytes = 1;

static __always_inline __u64 wakeup_flag(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

#endif /* AUSPEX_OUTPUT_H */
