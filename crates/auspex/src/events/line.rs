//! One compact line per event: time, type, pid, exe, then what the type
//! adds (args, a connection's addresses, an exit code), and the container.

use anstyle::{AnsiColor, Style};
use serde_json::Value;

fn style(kind: &str) -> Style {
    let color = match kind.split('_').next() {
        Some("process") => AnsiColor::Green,
        Some("connection") => AnsiColor::Cyan,
        Some("endpoint") => AnsiColor::Yellow,
        _ => AnsiColor::Magenta,
    };
    Style::new().fg_color(Some(color.into())).bold()
}

const DIM: Style = Style::new().dimmed();

/// A string from an event as the terminal may show it: quoted and escaped
/// like args when it holds a control character (C0, DEL or C1), since an
/// exe, comm or container id is chosen by whoever runs the process: a
/// binary named `x\e]0;pwned\a` would otherwise retitle the terminal.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        format!("{s:?}").into()
    } else {
        s.into()
    }
}

fn addr(v: &Value) -> String {
    match (v["ip"].as_str(), v["port"].as_u64()) {
        (Some(ip), Some(port)) if ip.contains(':') => format!("[{}]:{port}", text(ip)),
        (Some(ip), Some(port)) => format!("{}:{port}", text(ip)),
        _ => "?".into(),
    }
}

/// Arguments as a shell would show them: quoted where needed.
fn args(v: &Value) -> Option<String> {
    let args = v.as_array()?;
    Some(
        args.iter()
            .filter_map(Value::as_str)
            .map(|a| {
                if !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_graphic() && !"'\"\\$`".contains(c))
                {
                    a.to_string()
                } else {
                    format!("{:?}", a)
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

pub fn line(kind: &str, json: &str) -> String {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    // 2026-12-02T01:13:04.721883349Z -> 01:13:04.721
    let time = v["time"]
        .as_str()
        .and_then(|t| t.get(11..23))
        .map_or("--:--:--.---".into(), text);
    let kind = text(kind);
    let kind = kind.as_ref();
    let kind_style = style(kind);
    let mut line = format!("{DIM}{time}{DIM:#} {kind_style}{kind:<16}{kind_style:#}");
    let p = &v["process"];
    if let Some(pid) = p["pid"].as_u64() {
        let bold = Style::new().bold();
        line += &format!(" {bold}{pid:>7}{bold:#}");
        let exe = text(p["exe"].as_str().or(p["comm"].as_str()).unwrap_or("?"));
        line += &format!(" {exe}");
    }
    match kind {
        "process_exec" => {
            if let Some(args) = args(&p["args"]) {
                line += &format!(" {DIM}[{DIM:#}{args}{DIM}]{DIM:#}");
            }
        }
        "process_fork" => line += &format!(" ppid={}", p["ppid"]),
        "process_exit" => line += &format!(" exit={}", v["exit_code"]),
        "connection_open" | "connection_close" => {
            let arrow = match v["role"].as_str() {
                Some("server") => "<-",
                _ => "->",
            };
            line += &format!(
                " {} {} {arrow} {}",
                text(v["protocol"].as_str().unwrap_or("?")),
                addr(&v["local"]),
                addr(&v["remote"])
            );
        }
        "endpoint_open" | "endpoint_close" => {
            line += &format!(
                " {} {}",
                text(v["protocol"].as_str().unwrap_or("?")),
                addr(&v["local"])
            );
        }
        _ => {
            // Deltas: how much changed.
            let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
            line += &format!(
                " +{} ~{} -{}",
                count("added"),
                count("updated"),
                count("removed")
            );
        }
    }
    if let Some(container) = p["container_id"].as_str() {
        line += &format!(" {DIM}container={DIM:#}{}", text(container));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        anstream::adapter::strip_str(s).to_string()
    }

    #[test]
    fn an_exec_and_a_connection_on_one_line_each() {
        let exec = r#"{"time":"2026-11-25T21:51:00.273613845Z","type":"process_exec","process":{"pid":20781,"comm":"ls","exe":"/usr/bin/ls","args":["ls","a b"],"container_id":"0123456789ab"}}"#;
        assert_eq!(
            plain(&line("process_exec", exec)),
            "21:51:00.273 process_exec       20781 /usr/bin/ls [ls \"a b\"] container=0123456789ab"
        );
        let open = r#"{"time":"2026-11-25T21:51:00.273613845Z","type":"connection_open","protocol":"tcp","role":"client","local":{"ip":"10.0.0.1","port":5555},"remote":{"ip":"::1","port":80},"process":{"pid":7,"comm":"curl"}}"#;
        assert_eq!(
            plain(&line("connection_open", open)),
            "21:51:00.273 connection_open        7 curl tcp 10.0.0.1:5555 -> [::1]:80"
        );
        assert!(line("process_exec", exec).contains("\u{1b}["));
    }

    #[test]
    fn control_characters_in_any_string_are_escaped() {
        let exec = r#"{"time":"2026-11-25T21:51:00.273613845Z","type":"process_exec","process":{"pid":9,"comm":"x\u001b]0;c\u0007","exe":"/tmp/x\u001b]0;pwned\u0007EVIL","args":["x\u001b[2J"],"container_id":"c\u001b[31m\u009b"}}"#;
        let shown = line("process_exec", exec);
        assert_eq!(
            plain(&shown),
            r#"21:51:00.273 process_exec           9 "/tmp/x\u{1b}]0;pwned\u{7}EVIL" ["x\u{1b}[2J"] container="c\u{1b}[31m\u{9b}""#
        );
        // The only escapes left are the line's own styles.
        let unstyled = shown
            .replace(&format!("{DIM}"), "")
            .replace(&format!("{DIM:#}"), "")
            .replace(&format!("{}", style("process_exec")), "")
            .replace(&format!("{:#}", style("process_exec")), "")
            .replace(&format!("{}", Style::new().bold()), "")
            .replace(&format!("{:#}", Style::new().bold()), "");
        assert!(!unstyled.chars().any(char::is_control), "{unstyled:?}");
        let comm_only = r#"{"type":"connection_open","protocol":"t\u0007","role":"client","local":{"ip":"1\u0007","port":1},"remote":{"ip":"2","port":2},"process":{"pid":7,"comm":"a\u0007b"}}"#;
        assert_eq!(
            plain(&line("connection_open", comm_only)),
            r#"--:--:--.--- connection_open        7 "a\u{7}b" "t\u{7}" "1\u{7}":1 -> 2:2"#
        );
    }
}
