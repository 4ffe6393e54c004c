//! docs/events.md is the schema: this test reads its field tables and
//! holds real events of every type to them. Every field an event carries
//! must be documented for its type (or for every event), with the JSON type
//! the table says; every field the process table marks `always` must be
//! there.

mod common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream, UdpSocket};

use common::{time_scale, Agent, HeldShell};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A documented field: its JSON type and, in the process table, when it is
/// present.
#[derive(Debug, Clone)]
struct Field {
    json_type: String,
    present: String,
}

/// The field tables of docs/events.md by section: "" for the fields of
/// every event, "process", "lineage", and each event type.
fn documented() -> BTreeMap<String, BTreeMap<String, Field>> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md"))
            .unwrap();
    let mut tables: BTreeMap<String, BTreeMap<String, Field>> = BTreeMap::new();
    let mut sections = vec![String::new()];
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ").or(line.strip_prefix("### ")) {
            sections = if heading == "Lineage entries" {
                vec!["lineage".into()]
            } else {
                // "`connection_open` / `connection_close`": both.
                backticked(heading)
            };
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let field = Field {
            json_type: cells.get(2).unwrap_or(&"").to_string(),
            present: cells.get(3).unwrap_or(&"").to_string(),
        };
        for section in &sections {
            for name in backticked(cells[1]) {
                tables
                    .entry(section.clone())
                    .or_default()
                    .insert(name, field.clone());
            }
        }
    }
    tables
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// Whether `value` is of the documented JSON type.
fn has_type(value: &Value, json_type: &str) -> bool {
    // "integer or `null`": any of them.
    if json_type.contains(" or ") {
        return json_type.split(" or ").any(|t| has_type(value, t.trim()));
    }
    match json_type {
        "`null`" => value.is_null(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "object" => value.is_object(),
        "boolean" => value.is_boolean(),
        "`true`" => value == &Value::Bool(true),
        t if t.starts_with("array") => value.is_array(),
        // Documented elsewhere in the table ("as for connections").
        "" => true,
        other => panic!("docs/events.md names an unknown JSON type {other:?}"),
    }
}

/// Checks `object` against `table`; what is wrong, as lines.
fn check(what: &str, object: &Value, tables: &[&BTreeMap<String, Field>]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, value) in object.as_object().unwrap() {
        match tables.iter().find_map(|t| t.get(key)) {
            None => wrong.push(format!("{what}: `{key}` is not documented")),
            Some(f) if !has_type(value, &f.json_type) => wrong.push(format!(
                "{what}: `{key}` is {value}, documented as {}",
                f.json_type
            )),
            Some(_) => {}
        }
    }
    wrong
}

#[test]
fn every_event_written_matches_the_field_tables_of_the_docs() {
    let docs = documented();
    let process_table = &docs["process"];
    for section in [
        "",
        "process",
        "lineage",
        "process_fork",
        "connection_open",
        "endpoint_open",
    ] {
        assert!(
            docs.contains_key(section),
            "no table for {section:?}: {docs:#?}"
        );
    }
    let canary = (5 * time_scale()).to_string();
    let agent = Agent::start(&["--canary-timeout", &canary]);

    // One event of every type: a process, TCP both ways, a UDP endpoint and
    // a UDP flow.
    let shell = HeldShell::spawn("exit 3", &["schema"]);
    let pid = shell.pid();
    agent.event("process_exec", pid);
    shell.release();
    agent.event("process_exit", pid);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    drop((listener.accept().unwrap(), client, listener));
    // A UDP endpoint is a socket bound to a port it chose.
    let free = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = UdpSocket::bind(free).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"x", server.local_addr().unwrap()).unwrap();
    drop((server, sender));
    let me = std::process::id();
    for kind in ["connection_close", "endpoint_close"] {
        agent.event(kind, me);
    }
    agent.event_where("connection_open", me, |e| e["protocol"] == "udp");
    agent.event_where("endpoint_open", me, |e| e["protocol"] == "udp");

    let events = agent.events();
    agent.stop(Signal::SIGTERM);
    let mut wrong = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    for e in &events {
        let kind = e["type"].as_str().unwrap();
        types.insert(kind.to_string());
        let none = BTreeMap::new();
        let own = docs.get(kind).unwrap_or(&none);
        wrong.extend(check(&format!("{kind} {e}"), e, &[&docs[""], own]));
        let Some(process) = e.get("process") else {
            continue;
        };
        wrong.extend(check(
            &format!("{kind}'s process {e}"),
            process,
            &[process_table],
        ));
        for (key, f) in process_table {
            if f.present == "always" && process.get(key).is_none() {
                wrong.push(format!("{kind}'s process lacks `{key}`: {e}"));
            }
        }
        for ancestor in process["lineage"].as_array().into_iter().flatten() {
            wrong.extend(check(
                &format!("{kind}'s lineage {e}"),
                ancestor,
                &[&docs["lineage"]],
            ));
        }
        if kind == "process_exec" || kind == "process_fork" {
            for key in ["start_time", "exec_id"] {
                if process.get(key).is_none() {
                    wrong.push(format!("{kind} without `{key}`: {e}"));
                }
            }
        }
        if e["node"].as_str().is_none_or(str::is_empty) {
            wrong.push(format!("no node: {e}"));
        }
    }
    for kind in [
        "process_exec",
        "process_fork",
        "process_exit",
        "connection_open",
        "connection_close",
        "endpoint_open",
        "endpoint_close",
    ] {
        assert!(types.contains(kind), "no {kind} among {types:?}");
    }
    assert!(
        wrong.is_empty(),
        "{} of {} events differ from docs/events.md:\n{}",
        wrong.len(),
        events.len(),
        wrong.join("\n")
    );
}
