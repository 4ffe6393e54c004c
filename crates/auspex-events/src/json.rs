//! The events' JSON form, written straight into a `String` by code of its
//! own: the one the agent writes for every event (its sinks' hot path).
//!
//! serde's derived `Serialize` (lib.rs) stays the definition of that form:
//! the tests below hold this writer to it byte for byte, over every event
//! type and every optional field, with strings that need each kind of
//! escape. Why a second writer: serde_json writing an event was 40 % of
//! the agent's CPU in a core_bpf TCP storm (perf, `--call-graph dwarf`:
//! `Event::serialize` 40.0 %, of it `format_escaped_str_contents` 12.8 %,
//! the `#[serde(flatten)]` map machinery, and `IpAddr`'s `Display` through
//! `core::fmt` 6.9 %). Here what cannot hold a character JSON escapes
//! (times, hex ids, addresses, names of types) is copied without a scan,
//! strings scanned eight bytes at a time, each thread's process object
//! reused while it is the same process (`EventWriter`), and
//! numbers written by `itoa`; the output is a `String` from the start, so
//! that no UTF-8 validation follows (`from_utf8` was another 3 %).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{
    Ancestor, Connection, Delta, Endpoint, Event, EventKind, ExitStatus, Peer, Process, Protocol,
    Role, SocketAddr, Tracked,
};

/// Appends `event`'s JSON object (no newline) to `out`, without the
/// caches of [`EventWriter`].
pub fn write_event(out: &mut String, event: &Event) {
    EventWriter::default().write(out, event);
}

/// Processes whose JSON is kept at most, and their JSON's bytes in all;
/// the cache starts again when either is reached. A process object longer
/// than CACHED_JSON_MAX (long command lines) is written each time: such
/// objects are few, and kept per thread they would cost the most memory.
const CACHED_PROCESSES: usize = 4096;
const CACHED_BYTES: usize = 2 * 1024 * 1024;
const CACHED_JSON_MAX: usize = 1024;

/// Writes events one after the other, remembering what repeats between
/// them: the JSON of each thread's `process` object (every connection of a
/// process carries the same one), and the date and time to the second of
/// the last event. Neither changes a byte of the output: a process's JSON
/// is reused only for a process whose every field is the same (its shared
/// strings the same allocations), and the tests hold the output with the
/// caches to serde's.
#[derive(Default)]
pub struct EventWriter {
    /// By thread id: the process last written for it, and its JSON.
    processes: HashMap<u32, (Process, String)>,
    /// The JSON's bytes in `processes`.
    cached_bytes: usize,
    /// Objects written from the cache (for the tests).
    #[cfg(test)]
    hits: u64,
    /// The last event's whole second (Unix time) and its RFC 3339 digits.
    second: Option<(i64, [u8; 30])>,
}

impl EventWriter {
    /// Appends `event`'s JSON object (no newline) to `out`.
    pub fn write(&mut self, out: &mut String, event: &Event) {
        out.push_str("{\"time\":");
        self.time(out, &event.time);
        if let Some(node) = &event.node {
            out.push_str(",\"node\":");
            string(out, node);
        }
        out.push_str(",\"type\":\"");
        out.push_str(event.kind.name());
        out.push('"');
        match &event.kind {
            EventKind::ProcessExec { process: p } => {
                out.push_str(",\"process\":");
                self.process(out, p);
            }
            EventKind::ProcessFork {
                process: p,
                parent,
                thread,
            } => {
                out.push_str(",\"process\":");
                self.process(out, p);
                out.push_str(",\"parent\":{\"pid\":");
                int(out, parent.pid);
                out.push_str(",\"tid\":");
                int(out, parent.tid);
                out.push_str("},\"thread\":");
                boolean(out, *thread);
            }
            EventKind::ProcessExit { process: p, status } => {
                out.push_str(",\"process\":");
                process(out, p);
                self.forget(p.tid);
                match status {
                    Some(ExitStatus::Exited { exit_code }) => {
                        out.push_str(",\"exit_code\":");
                        int(out, *exit_code);
                    }
                    Some(ExitStatus::Signaled {
                        signal,
                        core_dumped,
                    }) => {
                        out.push_str(",\"signal\":");
                        int(out, *signal);
                        if *core_dumped {
                            out.push_str(",\"core_dumped\":true");
                        }
                    }
                    None => {}
                }
            }
            EventKind::ConnectionOpen(c) | EventKind::ConnectionClose(c) => self.connection(out, c),
            EventKind::EndpointOpen(e) | EventKind::EndpointClose(e) => self.endpoint(out, e),
            EventKind::ConnectionsDelta(d) | EventKind::EndpointsDelta(d) => delta(out, d),
        }
        if event.scraped {
            out.push_str(",\"scraped\":true");
        }
        out.push('}');
    }

    /// A process's object: the JSON last written for its thread when it is
    /// the same process, else written and kept (but for the one-off objects
    /// of execs and forks, with their lineage and parent).
    fn process(&mut self, out: &mut String, p: &Process) {
        if p.lineage.is_some() || p.parent_exec_id.is_some() {
            return process(out, p);
        }
        if let Some((known, json)) = self.processes.get(&p.tid) {
            if same_process(known, p) {
                out.push_str(json);
                #[cfg(test)]
                {
                    self.hits += 1;
                }
                return;
            }
        }
        let start = out.len();
        process(out, p);
        let json = &out[start..];
        if json.len() > CACHED_JSON_MAX {
            return self.forget(p.tid);
        }
        if self.processes.len() >= CACHED_PROCESSES || self.cached_bytes + json.len() > CACHED_BYTES
        {
            self.processes.clear();
            self.cached_bytes = 0;
        }
        self.cached_bytes += json.len();
        if let Some((_, old)) = self.processes.insert(p.tid, (p.clone(), json.to_string())) {
            self.cached_bytes -= old.len();
        }
    }

    /// Forgets the JSON of a thread that is gone.
    fn forget(&mut self, tid: u32) {
        if let Some((_, old)) = self.processes.remove(&tid) {
            self.cached_bytes -= old.len();
        }
    }

    /// The event's time: the digits to the second are the last event's
    /// when it was in the same second (chrono's calendar arithmetic was
    /// 6 % of the agent's CPU in a TCP storm), the nanoseconds written.
    fn time(&mut self, out: &mut String, t: &DateTime<Utc>) {
        let (second, nano) = (t.timestamp(), t.timestamp_subsec_nanos());
        let digits = match self.second {
            // A leap second's nanoseconds (past 1e9) go through the
            // calendar.
            Some((s, mut digits)) if s == second && nano < 1_000_000_000 => {
                let mut n = nano;
                for d in digits[20..29].iter_mut().rev() {
                    *d = b'0' + (n % 10) as u8;
                    n /= 10;
                }
                Some(digits)
            }
            _ => {
                let digits = crate::rfc3339_digits(t);
                self.second = digits.filter(|_| nano < 1_000_000_000).map(|d| (second, d));
                digits
            }
        };
        match digits {
            Some(digits) => quoted_digits(out, &digits),
            None => time(out, t),
        }
    }
}

impl EventWriter {
    /// The fields of a connection, after the event's `type`.
    fn connection(&mut self, out: &mut String, c: &Connection) {
        out.push_str(",\"protocol\":");
        protocol(out, c.protocol);
        if let Some(r) = c.role {
            out.push_str(",\"role\":");
            role(out, r);
        }
        out.push_str(",\"local\":");
        socket_addr(out, &c.local);
        out.push_str(",\"remote\":");
        socket_addr(out, &c.remote);
        netns_and_sock(out, c.netns, c.sock_id.0);
        if let Some(p) = &c.process {
            out.push_str(",\"process\":");
            self.process(out, p);
        }
    }

    fn endpoint(&mut self, out: &mut String, e: &Endpoint) {
        out.push_str(",\"protocol\":");
        protocol(out, e.protocol);
        out.push_str(",\"local\":");
        socket_addr(out, &e.local);
        netns_and_sock(out, e.netns, e.sock_id.0);
        if let Some(p) = &e.process {
            out.push_str(",\"process\":");
            self.process(out, p);
        }
    }
}

fn netns_and_sock(out: &mut String, netns: Option<u32>, sock_id: u64) {
    out.push_str(",\"netns\":");
    match netns {
        Some(n) => int(out, n),
        None => out.push_str("null"),
    }
    // As `SockId`'s Serialize: 16 hex digits.
    let _ = write!(out, ",\"sock_id\":\"{sock_id:016x}\"");
}

fn delta(out: &mut String, d: &Delta) {
    out.push_str(",\"added\":");
    list(out, &d.added, tracked);
    out.push_str(",\"removed\":");
    list(out, &d.removed, tracked);
}

fn tracked(out: &mut String, t: &Tracked) {
    let mut o = Object::new(out);
    if let Some(c) = &t.container_id {
        string(o.key("container_id"), c);
    }
    if let Some(e) = &t.exe {
        string(o.key("exe"), e);
    }
    protocol(o.key("protocol"), t.protocol);
    if let Some(r) = t.role {
        role(o.key("role"), r);
    }
    peer(o.key("local"), &t.local);
    if let Some(r) = &t.remote {
        peer(o.key("remote"), r);
    }
    time(o.key("opened"), &t.opened);
    if let Some(c) = &t.closed {
        time(o.key("closed"), c);
    }
    o.end();
}

fn peer(out: &mut String, p: &Peer) {
    out.push_str("{\"ip\":");
    string(out, &p.ip);
    out.push_str(",\"port\":");
    int(out, p.port);
    out.push('}');
}

fn process(out: &mut String, p: &Process) {
    out.push_str("{\"pid\":");
    int(out, p.pid);
    out.push_str(",\"tid\":");
    int(out, p.tid);
    out.push_str(",\"ppid\":");
    int(out, p.ppid);
    if let Some(t) = &p.start_time {
        out.push_str(",\"start_time\":");
        time(out, t);
    }
    if let Some(id) = &p.exec_id {
        out.push_str(",\"exec_id\":");
        string(out, id);
    }
    if let Some(id) = &p.parent_exec_id {
        out.push_str(",\"parent_exec_id\":");
        string(out, id);
    }
    out.push_str(",\"uid\":");
    int(out, p.uid);
    out.push_str(",\"gid\":");
    int(out, p.gid);
    out.push_str(",\"comm\":");
    string(out, &p.comm);
    if let Some(exe) = &p.exe {
        out.push_str(",\"exe\":");
        string(out, exe);
    }
    if p.exe_truncated {
        out.push_str(",\"exe_truncated\":true");
    }
    if p.exe_detached {
        out.push_str(",\"exe_detached\":true");
    }
    if let Some(args) = &p.args {
        out.push_str(",\"args\":");
        list(out, args, |out, a| string(out, a));
    }
    if let Some(t) = p.args_truncated {
        out.push_str(",\"args_truncated\":");
        boolean(out, t);
    }
    out.push_str(",\"cgroup_id\":");
    int(out, p.cgroup_id);
    if let Some(c) = &p.container_id {
        out.push_str(",\"container_id\":");
        string(out, c);
    }
    if let Some(l) = &p.lineage {
        out.push_str(",\"lineage\":");
        list(out, l, ancestor);
    }
    out.push('}');
}

fn ancestor(out: &mut String, a: &Ancestor) {
    out.push_str("{\"uid\":");
    int(out, a.uid);
    if let Some(exe) = &a.exe {
        out.push_str(",\"exe\":");
        string(out, exe);
    }
    if let Some(t) = &a.start_time {
        out.push_str(",\"start_time\":");
        time(out, t);
    }
    if let Some(id) = &a.exec_id {
        out.push_str(",\"exec_id\":");
        string(out, id);
    }
    out.push('}');
}

/// An object whose every field may be absent: the commas between them.
struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Object { out, first: true }
    }

    /// Starts field `name` (a name that needs no escape): its value next.
    fn key(&mut self, name: &str) -> &mut String {
        if !std::mem::replace(&mut self.first, false) {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
        self.out
    }

    fn end(self) {
        self.out.push('}');
    }
}

fn list<T>(out: &mut String, items: &[T], mut item: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(out, t);
    }
    out.push(']');
}

fn int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn boolean(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

fn protocol(out: &mut String, p: Protocol) {
    out.push_str(match p {
        Protocol::Tcp => "\"tcp\"",
        Protocol::Udp => "\"udp\"",
    });
}

fn role(out: &mut String, r: Role) {
    out.push_str(match r {
        Role::Client => "\"client\"",
        Role::Server => "\"server\"",
    });
}

fn socket_addr(out: &mut String, a: &SocketAddr) {
    out.push_str("{\"ip\":\"");
    match a.ip {
        // Four numbers: what `Ipv4Addr`'s Display writes, without going
        // through `core::fmt`.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                int(out, octet);
            }
        }
        // Its zero compression and embedded IPv4 forms are Display's.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push_str("\",\"port\":");
    int(out, a.port);
    out.push('}');
}

/// As `rfc3339_nanos` (lib.rs) writes it.
fn time(out: &mut String, t: &DateTime<Utc>) {
    match crate::rfc3339_digits(t) {
        Some(digits) => quoted_digits(out, &digits),
        None => string(out, &t.to_rfc3339_opts(SecondsFormat::Nanos, true)),
    }
}

fn quoted_digits(out: &mut String, digits: &[u8; 30]) {
    out.push('"');
    out.push_str(std::str::from_utf8(digits).expect("ASCII digits"));
    out.push('"');
}

/// Whether `a` and `b` would be written alike: every field equal, the
/// shared strings by allocation (the process table hands each event of a
/// process the same ones). Every field is named, so that a field added to
/// `Process` cannot be forgotten here.
fn same_process(a: &Process, b: &Process) -> bool {
    let Process {
        pid,
        tid,
        ppid,
        start_ticks: _,
        start_time,
        exec_id,
        parent_exec_id,
        uid,
        gid,
        comm,
        exe,
        exe_truncated,
        exe_detached,
        args,
        args_truncated,
        cgroup_id,
        cgroup1_id: _,
        container_id,
        lineage,
    } = a;
    *pid == b.pid
        && *tid == b.tid
        && *ppid == b.ppid
        && *start_time == b.start_time
        && same(exec_id, &b.exec_id)
        && same(parent_exec_id, &b.parent_exec_id)
        && *uid == b.uid
        && *gid == b.gid
        && *comm == b.comm
        && same(exe, &b.exe)
        && *exe_truncated == b.exe_truncated
        && *exe_detached == b.exe_detached
        && same(args, &b.args)
        && *args_truncated == b.args_truncated
        && *cgroup_id == b.cgroup_id
        && same(container_id, &b.container_id)
        && lineage.is_none()
        && b.lineage.is_none()
}

fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// `s` as a JSON string, escaped exactly as serde_json escapes: `"` and
/// `\`, the short forms of \b \f \n \r \t, every other control character
/// below 0x20 as `\u00xx` (lowercase hex), and nothing else.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none of them needs an escape.
        if let Some(chunk) = bytes.get(i..i + 8) {
            if !needs_escape(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\x08' => "\\b",
            b'\x0c' => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        // `i` is an ASCII byte's: the runs are whole characters.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes of `x` is below 0x20, `"` or `\`
/// (exact, not a heuristic: each term is the classic "has a zero byte" test
/// with its borrows masked by `!x`, so no byte of 0x80 or above counts).
fn needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    let control = below(x, 0x20);
    let quote = below(x ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(x ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SockId, TaskId};
    use std::sync::Arc;

    /// Deterministic variety (xorshift): a test that fails names its seed.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }
        fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            self.coin().then(|| f(self))
        }
        /// Strings with every class of character: plain ASCII, each
        /// escape, other controls, DEL, and multi-byte UTF-8, at every
        /// offset against the eight-byte chunks.
        fn string(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a",
                "bin",
                "/usr/bin/",
                "\"",
                "\\",
                "\n",
                "\r",
                "\t",
                "\x08",
                "\x0c",
                "\x00",
                "\x01",
                "\x1b",
                "\x1f",
                " ",
                "\x7f",
                "é",
                "€",
                "😀",
                "\u{9b}",
                "'",
                "/",
                "~",
            ];
            let len = self.below(24);
            (0..len)
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }
        fn time(&mut self) -> DateTime<Utc> {
            let secs = self.below(4_000_000_000) as i64 - 100_000_000;
            DateTime::from_timestamp(secs, self.below(1_000_000_000) as u32).unwrap()
        }
        fn addr(&mut self) -> SocketAddr {
            let ip = if self.coin() {
                IpAddr::from((self.next() as u32).to_be_bytes())
            } else {
                // Runs of zero groups, and IPv4-compatible forms.
                let mut groups = [0u16; 8];
                for g in groups.iter_mut() {
                    if self.coin() {
                        *g = self.next() as u16;
                    }
                }
                IpAddr::from(groups)
            };
            SocketAddr {
                ip,
                port: self.next() as u16,
            }
        }
        fn process(&mut self) -> Process {
            Process {
                pid: self.next() as u32,
                tid: self.next() as u32,
                ppid: self.next() as u32,
                start_ticks: None,
                cgroup1_id: self.next(),
                start_time: self.maybe(Gen::time),
                exec_id: self.maybe(|g| g.string().into()),
                parent_exec_id: self.maybe(|g| g.string().into()),
                uid: self.next() as u32,
                gid: self.next() as u32,
                comm: self.string().into(),
                exe: self.maybe(|g| g.string().into()),
                exe_truncated: self.coin(),
                exe_detached: self.coin(),
                args: self.maybe(|g| {
                    let n = g.below(5);
                    (0..n).map(|_| g.string()).collect::<Vec<_>>().into()
                }),
                args_truncated: self.maybe(Gen::coin),
                cgroup_id: self.next(),
                container_id: self.maybe(|g| g.string().into()),
                lineage: self.maybe(|g| {
                    let n = g.below(4);
                    (0..n)
                        .map(|_| Ancestor {
                            uid: g.next() as u32,
                            exe: g.maybe(|g| g.string().into()),
                            start_time: g.maybe(Gen::time),
                            exec_id: g.maybe(|g| g.string().into()),
                        })
                        .collect()
                }),
            }
        }
        fn connection(&mut self) -> Connection {
            Connection {
                protocol: self.protocol(),
                role: self.maybe(|g| if g.coin() { Role::Client } else { Role::Server }),
                local: self.addr(),
                remote: self.addr(),
                netns: self.maybe(|g| g.next() as u32),
                sock_id: SockId(self.next()),
                process: self.maybe(Gen::process),
            }
        }
        fn protocol(&mut self) -> Protocol {
            if self.coin() {
                Protocol::Tcp
            } else {
                Protocol::Udp
            }
        }
        fn tracked(&mut self) -> Tracked {
            let peer = |g: &mut Self| Peer {
                ip: g.string(),
                port: g.next() as u16,
            };
            Tracked {
                container_id: self.maybe(Gen::string),
                exe: self.maybe(Gen::string),
                protocol: self.protocol(),
                role: self.maybe(|g| if g.coin() { Role::Server } else { Role::Client }),
                local: peer(self),
                remote: self.maybe(peer),
                opened: self.time(),
                closed: self.maybe(Gen::time),
            }
        }
        fn event(&mut self) -> Event {
            let kind = match self.below(9) {
                0 => EventKind::ProcessExec {
                    process: self.process(),
                },
                1 => EventKind::ProcessFork {
                    process: self.process(),
                    parent: TaskId {
                        pid: self.next() as u32,
                        tid: self.next() as u32,
                    },
                    thread: self.coin(),
                },
                2 => EventKind::ProcessExit {
                    process: self.process(),
                    status: self.maybe(|g| ExitStatus::from_wait_status(g.next() as u32 & 0xffff)),
                },
                3 => EventKind::ConnectionOpen(self.connection()),
                4 => EventKind::ConnectionClose(self.connection()),
                5 | 6 => {
                    let c = self.connection();
                    let e = Endpoint {
                        protocol: c.protocol,
                        local: c.local,
                        netns: c.netns,
                        sock_id: c.sock_id,
                        process: c.process,
                    };
                    if self.coin() {
                        EventKind::EndpointOpen(e)
                    } else {
                        EventKind::EndpointClose(e)
                    }
                }
                _ => {
                    let mut d = || Delta {
                        added: (0..self.below(3)).map(|_| self.tracked()).collect(),
                        removed: (0..self.below(3)).map(|_| self.tracked()).collect(),
                    };
                    let d = d();
                    if self.coin() {
                        EventKind::ConnectionsDelta(d)
                    } else {
                        EventKind::EndpointsDelta(d)
                    }
                }
            };
            Event {
                time: self.time(),
                node: self.maybe(|g| Arc::from(g.string())),
                kind,
                scraped: self.coin(),
            }
        }
    }

    fn ours(event: &Event) -> String {
        let mut out = String::new();
        write_event(&mut out, event);
        out
    }

    #[test]
    fn every_event_is_written_byte_for_byte_as_serde_writes_it() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 1..=20_000u64 {
            let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let event = g.event();
            kinds.insert(event.kind.name());
            let serde = serde_json::to_string(&event).unwrap();
            assert_eq!(ours(&event), serde, "seed {seed}: {event:?}");
        }
        assert_eq!(kinds.len(), EventKind::names().count(), "{kinds:?}");
    }

    /// Through one writer, as the agent writes: events of a few threads
    /// whose processes repeat (the same shared strings), change a field,
    /// are replaced by another process of the same tid, and exit; and
    /// events of many seconds, some in the same second.
    #[test]
    fn the_writers_caches_change_nothing() {
        let mut g = Gen(0x5eed);
        let mut writer = EventWriter::default();
        let mut threads: Vec<Process> = (0..6).map(|_| g.process()).collect();
        let mut time = g.time();
        let (mut reused, mut out) = (0, String::new());
        for i in 0..20_000 {
            let t = g.below(threads.len() as u64) as usize;
            match g.below(10) {
                // Another process of this thread id.
                0 => {
                    threads[t] = Process {
                        tid: threads[t].tid,
                        ..g.process()
                    }
                }
                // One field changes, the shared strings stay.
                1 => threads[t].uid ^= 1,
                2 => threads[t].comm.push('x'),
                // The same string, another allocation.
                3 => threads[t].exe = threads[t].exe.as_deref().map(Arc::from),
                _ => reused += 1,
            }
            let mut p = threads[t].clone();
            p.lineage = None;
            p.parent_exec_id = None;
            let kind = match g.below(4) {
                0 => EventKind::ProcessExit {
                    process: p,
                    status: None,
                },
                1 => EventKind::ProcessExec {
                    process: g.process(),
                },
                _ => EventKind::ConnectionOpen(Connection {
                    process: Some(p),
                    ..g.connection()
                }),
            };
            if g.below(3) == 0 {
                time = g.time();
            } else {
                time += chrono::Duration::nanoseconds(g.below(2_000_000_000) as i64 - 300_000_000);
            }
            let event = Event::new(time, kind);
            out.clear();
            writer.write(&mut out, &event);
            assert_eq!(
                out,
                serde_json::to_string(&event).unwrap(),
                "event {i}: {event:?}"
            );
        }
        assert!(reused > 10_000, "{reused}");
        // The cache was used: connection events (half of them) of an
        // unchanged process whose object is short enough to keep (the
        // generator's strings make many too long); a cache that never
        // hits gives 0.
        assert!(writer.hits > 2_000, "{} hits", writer.hits);
        assert!(writer.processes.len() <= CACHED_PROCESSES);
        let bytes: usize = writer.processes.values().map(|(_, j)| j.len()).sum();
        assert_eq!(writer.cached_bytes, bytes);
        assert!(bytes <= CACHED_BYTES);
    }

    #[test]
    fn escapes_at_every_offset_match_serde() {
        for c in (0u8..=0x7f).map(char::from).chain(['é', '€', '\u{9b}']) {
            for offset in 0..17 {
                let s = format!("{}{c}{}", "x".repeat(offset), "y".repeat(offset % 5));
                let mut out = String::new();
                string(&mut out, &s);
                assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn the_eight_byte_test_is_exact() {
        for b in 0u8..=255 {
            for at in 0..8 {
                let mut bytes = [b'a'; 8];
                bytes[at] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(
                    needs_escape(u64::from_le_bytes(bytes)),
                    expected,
                    "{b:#x} at {at}"
                );
                // Next to bytes with the high bit set (no false borrow).
                let mut high = [0xffu8; 8];
                high[at] = b;
                assert_eq!(needs_escape(u64::from_le_bytes(high)), expected);
            }
        }
    }
}
