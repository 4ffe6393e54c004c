/* SPDX-License-Identifier: GPL-2.0-only */
/* Deciding which exiting thread reports its process's exit, exactly once. */
#ifndef AUSPEX_EXIT_ONCE_H
#define AUSPEX_EXIT_ONCE_H

#include <bpf/bpf_core_read.h>

#include "events.h"
#include "lib/constants.h"

/* A process, for as long as anyone could confuse it: the leader's start
 * time tells a reused pid apart. */
struct exit_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start_time;
};

/* Processes whose exit was reported by a thread that may have been raced.
 * A lone thread that finds its process's claim deletes it; the others the
 * LRU forgets once thousands of later claims have come, long after the last
 * of their threads is gone. Large, because an LRU map evicts in batches per
 * CPU: a claim must survive until its racer has looked. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct exit_key);
	__type(value, __u8);
} exits_reported SEC(".maps");

/*
 * Whether `task`, exiting, is the one to report its process's exit.
 * do_exit() decrements signal->live before the tracepoint, so usually only
 * the group's last thread reads zero. But two threads exiting at once can
 * both decrement before either reads (measured: about 1 process in 10,000
 * with two busy threads), so the one that claims the process first reports
 * it. (Newer kernels pass group_dead to the tracepoint; reading the counter
 * works on all of them.)
 *
 * Claiming means inserting into an LRU map, and once it is full every
 * insert evicts: about 0.5 us. Only a thread that may race pays it: while
 * another thread is not yet released (signal->nr_threads > 1). A thread
 * alone in its group only looks for an earlier claim, made by a thread
 * that raced it and has been released since.
 */
static __always_inline bool reports_process_exit(struct task_struct *task)
{
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return false;

	struct exit_key key = {
		.tgid = BPF_CORE_READ(task, tgid),
		.start_time = BPF_CORE_READ(task, group_leader, start_time),
	};

	if (BPF_CORE_READ(task, signal, nr_threads) <= 1) {
		/* The last thread: nobody looks after it. */
		if (!bpf_map_lookup_elem(&exits_reported, &key))
			return true;
		bpf_map_delete_elem(&exits_reported, &key);
		return false;
	}

	__u8 reported = 1;

	/* Any other failure than "already there" still reports: a duplicate
	 * is better than a lost exit. */
	return bpf_map_update_elem(&exits_reported, &key, &reported, BPF_NOEXIST) != -EEXIST;
}

#endif /* AUSPEX_EXIT_ONCE_H */
