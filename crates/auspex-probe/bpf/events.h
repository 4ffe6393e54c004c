/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The wire format between the probes and userspace, defined once.
 *
 * The build turns these structs into Rust types (libbpf-cargo reads them
 * from the object's BTF), so userspace never re-declares a layout by hand.
 * Rules that keep that safe:
 *   - fixed-width integers and byte arrays only: no enum-typed, bool or
 *     pointer fields, so that any byte pattern is a valid value of the
 *     generated Rust type;
 *   - explicit padding fields, so no struct has implicit padding;
 *   - every record starts with struct event_header; `kind` says which
 *     struct follows;
 *   - a struct that no program keeps in BTF on its own (it only travels
 *     through the ring buffer) is anchored in process.bpf.c.
 */
#ifndef AUSPEX_EVENTS_H
#define AUSPEX_EVENTS_H

/* Sizes are powers of two: the probes mask offsets with (size - 1) so the
 * verifier can prove every variable-offset access in bounds. */
enum auspex_limits {
	AUSPEX_COMM_LEN = 16,
	/* Bytes of the argument vector copied per exec (NUL-separated). */
	AUSPEX_ARGS_MAX = 4096,
	/* Bytes for the executable path, and the components walked to build it. */
	AUSPEX_PATH_MAX = 4096,
	AUSPEX_PATH_COMPONENTS = 48,
	AUSPEX_NAME_MAX = 256,
};

enum auspex_event_kind {
	AUSPEX_EVENT_EXEC = 1,
	AUSPEX_EVENT_FORK = 2,
	AUSPEX_EVENT_EXIT = 3,
	/* struct sock_event */
	AUSPEX_EVENT_CONNECTION_OPEN = 4,
	AUSPEX_EVENT_CONNECTION_CLOSE = 5,
	AUSPEX_EVENT_ENDPOINT_OPEN = 6,
	AUSPEX_EVENT_ENDPOINT_CLOSE = 7,
	/* A UDP socket was closed: userspace closes what it reported for it. */
	AUSPEX_EVENT_UDP_RELEASE = 8,
};

/* Index into the per-CPU `counters` map. */
enum auspex_counter {
	/* A record was lost because the ring buffer was full. */
	AUSPEX_DROP_RINGBUF_EXEC = 0,
	AUSPEX_DROP_RINGBUF_FORK = 1,
	AUSPEX_DROP_RINGBUF_EXIT = 2,
	AUSPEX_DROP_RINGBUF_NET = 3,
	/* A socket could not be remembered because its map was full: its
	 * events then lack their owner, or (UDP) repeat. */
	AUSPEX_DROP_SOCK_OWNERS_FULL = 4,
	AUSPEX_DROP_LISTENERS_FULL = 5,
	AUSPEX_DROP_UDP_SOCKS_FULL = 6,
	/* A connected UDP socket whose local port never appeared. */
	AUSPEX_DROP_UDP_CONNECT_UNRESOLVED = 7,
	AUSPEX_COUNTER_MAX = 8,
};

enum auspex_role {
	AUSPEX_ROLE_UNKNOWN = 0,
	AUSPEX_ROLE_CLIENT = 1,
	AUSPEX_ROLE_SERVER = 2,
};

/* Bits of sock_event.flags. */
enum auspex_sock_flags {
	/* hdr.task holds the socket's owner; otherwise it is unknown (the
	 * socket predates the probe) and hdr.task is zero. */
	AUSPEX_SOCK_OWNER_KNOWN = 1,
};

/* Bits of exec_event.flags. */
enum auspex_exec_flags {
	/* The argument vector was longer than AUSPEX_ARGS_MAX bytes. */
	AUSPEX_EXEC_ARGS_TRUNCATED = 1,
	/* The path had more components or bytes than the probe walks. */
	AUSPEX_EXEC_EXE_TRUNCATED = 2,
	/* The argument vector could not be read from user memory. */
	AUSPEX_EXEC_ARGS_UNREADABLE = 4,
	/* data holds the path as given to execve, not resolved components
	 * (the legacy probe without BTF cannot walk dentries). */
	AUSPEX_EXEC_EXE_VERBATIM = 8,
	/* data holds one component, the name of an executable that is in no
	 * mounted directory (a memfd): "memfd:NAME\0". */
	AUSPEX_EXEC_EXE_DETACHED = 16,
};

/* Bits of exit_event.flags. */
enum auspex_exit_flags {
	/* The exit status is not known (the legacy probe saw no exit_group). */
	AUSPEX_EXIT_STATUS_UNKNOWN = 1,
};

/* The task an event is about. */
struct task_info {
	__u32 pid;		/* thread group id of the subject */
	__u32 tid;		/* thread id of the subject */
	__u32 ppid;		/* thread group id of the subject's real parent */
	__u32 uid;		/* real uid, in the initial user namespace */
	__u32 gid;
	__u32 _pad;
	__u64 cgroup_id;	/* cgroup v2 id of the subject */
	/* When the subject's process started: its leader's start_boottime
	 * (CLOCK_BOOTTIME ns, what /proc/PID/stat's starttime counts in clock
	 * ticks); 0 where the probe cannot read it (no BTF). */
	__u64 start_boottime;
	__u8 comm[AUSPEX_COMM_LEN];
};

struct event_header {
	__u32 kind;		/* enum auspex_event_kind */
	__u32 size;		/* bytes of the whole record, header included */
	__u64 boot_ns;		/* bpf_ktime_get_boot_ns() */
	struct task_info task;
};

/*
 * A successful execve/execveat. Variable length: only `size` bytes are sent,
 * `data` holds exe_len bytes of path then args_len bytes of arguments.
 *
 * The path is written as its components leaf first, each followed by a NUL
 * ("true\0bin\0usr\0" for /usr/bin/true): walking dentries yields them in
 * that order and writing forward keeps the probe simple and cheap; userspace
 * reverses them. The arguments are the process's argv area as it is in
 * memory: NUL-terminated strings back to back.
 */
struct exec_event {
	struct event_header hdr;
	__u32 argc;		/* from the kernel, even when args are truncated */
	__u16 exe_len;
	__u16 args_len;
	__u32 flags;		/* enum auspex_exec_flags */
	__u32 _pad;
	/* The id of the task's cgroup in the cgroup v1 hierarchy of its
	 * memory (else pids) controller; 0 where the probe cannot read it (no
	 * BTF). On a host with cgroup v1 the v2 id tells no container apart:
	 * userspace remembers each container by this id instead of reading
	 * /proc/PID/cgroup at every exec. */
	__u64 cgroup1_id;
	__u8 data[AUSPEX_PATH_MAX + AUSPEX_ARGS_MAX];
};

/* A new task. The header's task is the child. */
struct fork_event {
	struct event_header hdr;
	__u32 parent_pid;
	__u32 parent_tid;
	__u32 is_thread;	/* 1: a thread in the parent's group; 0: a new process */
	__u32 _pad;
};

/* The last thread of a process exited. */
struct exit_event {
	struct event_header hdr;
	/* Raw wait status: (code << 8) for exit(code), the signal number in
	 * the low 7 bits when killed, 0x80 set when it dumped core. */
	__u32 exit_status;
	__u32 flags;		/* enum auspex_exit_flags */
};

/*
 * A socket opened or closed a connection, or started or stopped listening.
 * The header's task is the socket's owner: the process that created the
 * connection (client), that listens (server), or that first used the UDP
 * socket. Addresses are in network byte order, IPv4 in the first 4 bytes.
 */
struct sock_event {
	struct event_header hdr;
	__u64 sock;		/* the kernel socket's address: an identity, never read */
	__u32 netns;		/* inode number of the network namespace */
	__u16 family;		/* AF_INET or AF_INET6 */
	__u8 protocol;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 role;		/* enum auspex_role */
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;	/* host byte order */
	__u16 remote_port;
	__u32 flags;		/* enum auspex_sock_flags */
};

/*
 * Every record type, so a buffer can hold any of them. It is also how the
 * record types and the enums above reach the object's BTF, from which the
 * build generates their Rust twins: clang emits BTF only for types that a
 * map, global or function signature refers to.
 */
struct auspex_abi {
	enum auspex_limits limits;
	enum auspex_event_kind kind;
	enum auspex_counter counter;
	enum auspex_exec_flags exec_flags;
	enum auspex_exit_flags exit_flags;
	enum auspex_role role;
	enum auspex_sock_flags sock_flags;
};

union auspex_record {
	struct event_header header;
	struct exec_event exec;
	struct fork_event fork;
	struct exit_event exit;
	struct sock_event sock;
	struct auspex_abi abi;
};

#endif /* AUSPEX_EVENTS_H */
