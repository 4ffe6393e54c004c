/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef AUSPEX_SCRATCH_H
#define AUSPEX_SCRATCH_H

#include "events.h"

/* A per-CPU buffer where a record is assembled when it is too large for the
 * BPF stack (an exec record), so that only its used bytes are sent. The
 * value type is the union of all records, which also keeps every record
 * type in the object's BTF so the build can generate its Rust twin. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union auspex_record);
} scratch SEC(".maps");

#endif /* AUSPEX_SCRATCH_H */
