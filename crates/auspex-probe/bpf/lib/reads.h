/* SPDX-License-Identifier: GPL-2.0-only */
/* Reading a field of a kernel object, the cheap way where allowed. */
#ifndef AUSPEX_READS_H
#define AUSPEX_READS_H

#include <bpf/bpf_core_read.h>

/*
 * Where the verifier knows a pointer's type (the arguments of a tp_btf
 * program), a field is one direct load, CO-RE-relocated. Anywhere else the
 * pointer is a plain number and every field takes a bpf_probe_read_kernel()
 * call, tens of ns each. `trusted` is a constant at every call site, so
 * each program keeps only one of the two ways.
 */
#define TRUSTED true
#define UNTRUSTED false
#define KREAD(trusted, direct, ptr, ...) ((trusted) ? (direct) : BPF_CORE_READ(ptr, __VA_ARGS__))

#endif /* AUSPEX_READS_H */
