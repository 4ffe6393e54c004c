/* SPDX-License-Identifier: GPL-2.0-only */
/* Where the legacy (ebpf) probes send their records: a perf event array. */
#ifndef AUSPEX_PERF_OUTPUT_H
#define AUSPEX_PERF_OUTPUT_H

#include "lib/counters.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

static __always_inline void emit(void *ctx, void *record, __u32 size, __u32 counter)
{
	if (bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, record, size))
		count(counter);
}

#endif /* AUSPEX_PERF_OUTPUT_H */
