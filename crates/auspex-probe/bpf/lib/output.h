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

/*
 * The flag for a record of `size` bytes, sent after this call
 * (bpf_ringbuf_output) or reserved before it (bpf_ringbuf_submit): wake
 * the reader when the waiting data crosses a multiple of wakeup_bytes
 * around this record, not for every record above it. A reader that lags
 * behind (a loaded machine) was otherwise woken again by every record
 * while it still had a wakeup to answer: perf over 30,000 loopback TCP
 * connections found 27 % of handle_tcp_state's time in that self-IPI
 * (arch_irq_work_raise under bpf_ringbuf_submit). The window is the
 * record's size (with the ring's 8-byte header and alignment) on both
 * sides, as the record may or may not be counted yet: a crossing is seen
 * at least once (twice at worst, a wakeup too many), and a crossing that
 * records on two CPUs hide from each other is made up at the next
 * multiple, and by the timed poll.
 */
static __always_inline __u64 wakeup_flag(__u32 size)
{
	__u64 threshold = wakeup_bytes;
	__u64 avail, span = (__u64)size + 16;

	if (threshold <= 1)
		return BPF_RB_FORCE_WAKEUP;
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if ((avail + span) / threshold != (avail > span ? avail - span : 0) / threshold)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

#endif /* AUSPEX_OUTPUT_H */
