//! The classic Prometheus text format (0.0.4), from the OpenMetrics text
//! that prometheus-client writes (it writes no other format; its upstream
//! change for one, prometheus/client_rust#293, is still open). The two
//! differ, for what Auspex exports, only in the family names of HELP and
//! TYPE lines (OpenMetrics names a counter family without `_total` and an
//! info family without `_info`, the classic format by its samples' name), in
//! the `info` type (a gauge of 1 in the classic format), and in the `# UNIT`
//! and `# EOF` lines, which the classic format does not have. Samples are
//! the same lines. `promtool check metrics` checks the result in the tests.

/// The classic text form of `openmetrics`.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, which decides the name: held until then.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_string(), kind),
                _ => (family.to_string(), "untyped"),
            };
            if let Some((help_family, text)) = help.take() {
                if help_family == family {
                    out.push_str(&format!("# HELP {name} {text}\n"));
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_take_their_samples_names() {
        let openmetrics = "\
# HELP auspex_events Events reported, by type.
# TYPE auspex_events counter
auspex_events_total{type=\"process_exec\"} 3
# HELP auspex_ready 1 when ready.
# TYPE auspex_ready gauge
auspex_ready 1
# HELP auspex_method The method.
# TYPE auspex_method info
auspex_method_info{method=\"ebpf\"} 1
# HELP auspex_up_seconds Uptime.
# TYPE auspex_up_seconds gauge
# UNIT auspex_up_seconds seconds
auspex_up_seconds 2
# EOF
";
        assert_eq!(
            from_openmetrics(openmetrics),
            "\
# HELP auspex_events_total Events reported, by type.
# TYPE auspex_events_total counter
auspex_events_total{type=\"process_exec\"} 3
# HELP auspex_ready 1 when ready.
# TYPE auspex_ready gauge
auspex_ready 1
# HELP auspex_method_info The method.
# TYPE auspex_method_info gauge
auspex_method_info{method=\"ebpf\"} 1
# HELP auspex_up_seconds Uptime.
# TYPE auspex_up_seconds gauge
auspex_up_seconds 2
"
        );
    }
}
