//! What a subscriber asked for (auspex.v1.SubscribeRequest), checked: a
//! filter that can never match is refused with INVALID_ARGUMENT naming it,
//! rather than accepted to stream nothing (issue 18: `["PROCESS_EXEC"]`
//! was).

use serde::Deserialize;
use tonic::Status;

use super::pb::SubscribeRequest;

/// The fields of an event the filters look at, read from its JSON.
#[derive(Debug, Default, Deserialize)]
pub struct Key {
    #[serde(default)]
    process: Option<KeyProcess>,
}

#[derive(Debug, Default, Deserialize)]
struct KeyProcess {
    pid: u32,
    #[serde(default)]
    exe: Option<String>,
    #[serde(default)]
    container_id: Option<String>,
}

impl Key {
    /// An event's key; a document without a process (a delta) has none.
    pub fn of(json: &str) -> Key {
        serde_json::from_str(json).unwrap_or_default()
    }
}

/// The container ids of events: the first 12 hex digits of the runtime's.
const CONTAINER_ID_LEN: usize = 12;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    types: Vec<String>,
    containers: Vec<String>,
    pids: Vec<u32>,
    exes: Vec<String>,
}

impl Filter {
    pub fn from_request(request: SubscribeRequest) -> Result<Filter, Status> {
        let known: Vec<&str> = auspex_events::EventKind::names().collect();
        for (i, t) in request.types.iter().enumerate() {
            if !known.contains(&t.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "types[{i}]: unknown event type {t:?} (one of: {})",
                    known.join(", ")
                )));
            }
        }
        let mut containers = Vec::new();
        for (i, id) in request.container_ids.iter().enumerate() {
            let hex = id.len() >= CONTAINER_ID_LEN
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(Status::invalid_argument(format!(
                    "container_ids[{i}]: {id:?} is not a container id (12 to 64 hex digits)"
                )));
            }
            containers.push(id[..CONTAINER_ID_LEN].to_ascii_lowercase());
        }
        if let Some(i) = request.pids.iter().position(|p| *p == 0) {
            return Err(Status::invalid_argument(format!(
                "pids[{i}]: 0 is not a process id"
            )));
        }
        if let Some((i, exe)) = request
            .exes
            .iter()
            .enumerate()
            .find(|(_, e)| !e.starts_with('/'))
        {
            return Err(Status::invalid_argument(format!(
                "exes[{i}]: {exe:?} is not an absolute path"
            )));
        }
        Ok(Filter {
            types: request.types,
            containers,
            pids: request.pids,
            exes: request.exes,
        })
    }

    /// Whether it looks at the event's process (else the type suffices).
    pub fn needs_key(&self) -> bool {
        !(self.containers.is_empty() && self.pids.is_empty() && self.exes.is_empty())
    }

    /// `key` is asked for only when the type matches and the filter looks
    /// at the process (reading it parses the JSON).
    pub fn matches<K: std::borrow::Borrow<Key>>(
        &self,
        kind: &str,
        key: impl FnOnce() -> K,
    ) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| t == kind) {
            return false;
        }
        if !self.needs_key() {
            return true;
        }
        let key = key();
        let Some(p) = &key.borrow().process else {
            return false;
        };
        let container = p.container_id.as_deref();
        (self.containers.is_empty()
            || container.is_some_and(|c| self.containers.iter().any(|x| x == c)))
            && (self.pids.is_empty() || self.pids.contains(&p.pid))
            && (self.exes.is_empty() || p.exe.as_ref().is_some_and(|e| self.exes.contains(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(f: impl FnOnce(&mut SubscribeRequest)) -> SubscribeRequest {
        let mut r = SubscribeRequest::default();
        f(&mut r);
        r
    }

    #[test]
    fn filters_that_cannot_match_are_refused_by_name() {
        let cases = [
            (
                request(|r| r.types = vec!["process_exec".into(), "PROCESS_EXEC".into()]),
                "types[1]: unknown event type \"PROCESS_EXEC\"",
            ),
            (
                request(|r| r.container_ids = vec!["abc".into()]),
                "container_ids[0]: \"abc\" is not a container id",
            ),
            (
                request(|r| r.pids = vec![1, 0]),
                "pids[1]: 0 is not a process id",
            ),
            (
                request(|r| r.exes = vec!["true".into()]),
                "exes[0]: \"true\" is not an absolute path",
            ),
        ];
        for (r, expected) in cases {
            let status = Filter::from_request(r).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().starts_with(expected),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn every_filter_given_must_match() {
        let exec = r#"{"type":"process_exec","process":{"pid":42,"exe":"/bin/true","container_id":"0123456789ab","args":["x"]}}"#;
        let host = r#"{"type":"process_exec","process":{"pid":42,"exe":"/bin/true"}}"#;
        let delta = r#"{"type":"connections_delta","added":[]}"#;
        let long_id = "0123456789AB".to_string() + &"c".repeat(52);
        let f = Filter::from_request(request(|r| {
            r.container_ids = vec![long_id];
            r.pids = vec![42];
        }))
        .unwrap();
        assert!(f.matches("process_exec", || Key::of(exec)));
        assert!(!f.matches("process_exec", || Key::of(host)));
        assert!(!f.matches("connections_delta", || Key::of(delta)));
        let f = Filter::from_request(request(|r| r.exes = vec!["/bin/false".into()])).unwrap();
        assert!(!f.matches("process_exec", || Key::of(exec)));
        let all = Filter::from_request(SubscribeRequest::default()).unwrap();
        assert!(!all.needs_key());
        assert!(all.matches("connections_delta", Key::default));
    }
}
