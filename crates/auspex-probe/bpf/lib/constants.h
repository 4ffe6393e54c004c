/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Kernel constants the probes use that vmlinux.h cannot carry: it has the
 * kernel's types and enums (IPPROTO_TCP, TCP_LISTEN, ... come from there),
 * but not its macros. Defined here once, with the values of the uapi
 * headers, which never change.
 */
#ifndef AUSPEX_CONSTANTS_H
#define AUSPEX_CONSTANTS_H

/* include/linux/socket.h */
#define AF_INET 2
#define AF_INET6 10

/* include/uapi/linux/time.h */
#define CLOCK_MONOTONIC 1

/* include/uapi/linux/sched.h */
#define CLONE_THREAD 0x00010000
#define CLONE_PARENT 0x00008000

/* include/uapi/asm-generic/errno-base.h */
#define EEXIST 17

#endif /* AUSPEX_CONSTANTS_H */
