//! The options of `auspex run`, resolved from four layers: the command line
//! over `AUSPEX_*` environment variables over a YAML config file over the
//! defaults. figment does the layering; every layer is read through the same
//! serde definitions, so a value is checked the same way wherever it comes
//! from, and an error names the key and where it was set.

mod show;
pub mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

pub use show::show;
pub use values::{Listen, Report};

use crate::cli::RunFlags;

/// The environment variable prefix: `AUSPEX_METHOD` sets `method`.
pub const ENV_PREFIX: &str = "AUSPEX_";
/// Names the config file when `--config` does not.
pub const CONFIG_ENV: &str = "AUSPEX_CONFIG";

/// Whether an `AUSPEX_*` variable (its name lowercased, without the prefix)
/// is a run option. Other variables under the prefix are ignored: the
/// environment is shared with the scripts and platform that start the agent
/// (the test scripts' `AUSPEX_KERNEL_MATRIX`, the service links Kubernetes
/// adds for a Service named `auspex`: `AUSPEX_SERVICE_HOST`, ...), so an
/// unknown name is not an error; one that looks like a misspelt option is
/// warned about, with the option it resembles.
fn is_option(key: &str) -> bool {
    option_keys().iter().any(|k| k == key)
}

/// The keys of every run option.
fn option_keys() -> Vec<String> {
    match serde_json::to_value(RunArgs::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => unreachable!("options serialise as a map"),
    }
}

/// How alike a name must be to an option's to be taken for a misspelling
/// of it: normalised edit distance, so that one wrong letter in `method`
/// (0.83) counts and a shared prefix alone (`kernel_matrix` against
/// `kernel_btf`, 0.54) does not.
const MISSPELT: f64 = 0.8;

/// `AUSPEX_*` variables that are not options but look like one, each with
/// the option it resembles.
fn misspelt_variables() -> Vec<(String, String)> {
    let keys = option_keys();
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| {
            let key = name.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
            if is_option(&key) {
                return None;
            }
            let (score, like) = keys
                .iter()
                .map(|k| (strsim::normalized_damerau_levenshtein(&key, k), k))
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            (score >= MISSPELT).then(|| (name, format!("{ENV_PREFIX}{}", like.to_uppercase())))
        })
        .collect()
}

/// The effective options of `auspex run`. Keys of the config file and the
/// environment are these field names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunArgs {
    /// The collection method, or `auto`.
    #[serde(with = "values::method")]
    pub method: String,
    /// A BTF file to relocate the probes against instead of the kernel's.
    pub btf: Option<PathBuf>,
    /// Where the running kernel's own BTF is read (in a container: the
    /// host's, mounted).
    pub kernel_btf: PathBuf,
    #[serde(with = "values::ring_size")]
    pub ring_buffer_size: u32,
    /// Events go here instead of stdout.
    pub output: Option<PathBuf>,
    pub listen: Listen,
    pub grpc_listen: values::Endpoints,
    /// TLS for the gRPC stream's TCP endpoints (cert and key), mutual
    /// with a client CA.
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback gRPC address without TLS.
    pub grpc_insecure: bool,
    /// TLS for the HTTP API.
    pub http_tls_cert: Option<PathBuf>,
    pub http_tls_key: Option<PathBuf>,
    pub http_tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback HTTP address without TLS.
    pub http_insecure: bool,
    /// Connections each API listener holds before closing the idlest.
    #[serde(with = "values::max_connections")]
    pub api_max_connections: usize,
    /// How long a client may take to send a request's headers (HTTP/1).
    #[serde(with = "values::interval")]
    pub api_header_timeout: Duration,
    /// A connection without a request in progress this long is closed.
    #[serde(with = "values::interval")]
    pub api_idle_timeout: Duration,
    pub report: Report,
    #[serde(with = "values::interval")]
    pub scan_interval: Duration,
    #[serde(with = "values::interval")]
    pub canary_timeout: Duration,
    #[serde(with = "values::heartbeat")]
    pub heartbeat_interval: Duration,
    #[serde(with = "values::interval")]
    pub delta_interval: Duration,
    #[serde(with = "values::secs")]
    pub afterglow: Duration,
    pub connection_rate_limit: u32,
    pub aggregate_public: bool,
    #[serde(with = "values::networks")]
    pub never_aggregate: Vec<ipnet::IpNet>,
    pub termination_log: PathBuf,
    /// After loading: drop capabilities, set no_new_privs, install seccomp.
    pub lockdown: bool,
    /// How long stopping may wait for the sinks to write what they hold.
    #[serde(with = "values::secs")]
    pub flush_timeout: Duration,
    /// Events each sink's queue holds before it loses the oldest.
    #[serde(with = "values::sink_queue")]
    pub sink_queue: usize,
    /// What to collect: groups and event types; the rest is not loaded.
    #[serde(with = "values::events")]
    pub events: auspex_events::EventSelection,
    /// The `node` of every event; None: `NODE_NAME`, else the host name.
    #[serde(with = "values::node_name")]
    pub node_name: Option<String>,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            method: "auto".into(),
            btf: None,
            kernel_btf: auspex_probe::btf::KERNEL_BTF.into(),
            ring_buffer_size: 8 << 20,
            output: None,
            listen: values::parse_listen("127.0.0.1:8080").expect("a valid address"),
            grpc_listen: values::Endpoints::default(),
            grpc_tls_cert: None,
            grpc_tls_key: None,
            grpc_tls_client_ca: None,
            grpc_insecure: false,
            http_tls_cert: None,
            http_tls_key: None,
            http_tls_client_ca: None,
            http_insecure: false,
            api_max_connections: 256,
            api_header_timeout: Duration::from_secs(10),
            api_idle_timeout: Duration::from_secs(60),
            report: Report::Raw,
            scan_interval: Duration::from_secs(5),
            canary_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(60),
            delta_interval: Duration::from_secs(30),
            afterglow: Duration::from_secs(300),
            connection_rate_limit: 2048,
            aggregate_public: false,
            never_aggregate: Vec::new(),
            termination_log: "/dev/termination-log".into(),
            lockdown: true,
            flush_timeout: Duration::from_secs(5),
            sink_queue: 16384,
            events: auspex_events::EventSelection::all(),
            node_name: None,
        }
    }
}

/// The command line as a figment layer, named so that `config show` and
/// errors can say a value came from a flag.
struct CommandLine<'a>(&'a RunFlags);

impl Provider for CommandLine<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("command line").interpolater(|_, keys| format!("--{}", flag(keys)))
    }

    fn data(&self) -> figment::Result<figment::value::Map<Profile, figment::value::Dict>> {
        Serialized::defaults(self.0).data()
    }
}

/// The flag of a config key.
fn flag<K: AsRef<str>>(keys: &[K]) -> String {
    keys.iter()
        .map(|k| k.as_ref().replace('_', "-"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The layers, lowest first.
fn figment(flags: &RunFlags) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(RunArgs::default()));
    if let Some(path) = config_path(flags) {
        figment = figment.merge(Yaml::file_exact(path));
    }
    let env = Env::prefixed(ENV_PREFIX).filter(|key| is_option(&key.as_str().to_ascii_lowercase()));
    figment.merge(env).merge(CommandLine(flags))
}

/// The config file: `--config`, else `AUSPEX_CONFIG`.
fn config_path(flags: &RunFlags) -> Option<PathBuf> {
    flags
        .config
        .clone()
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
}

/// Resolves the options of `auspex run`; an error names the key, where its
/// value came from, and (for a YAML syntax error) the line.
pub fn resolve(flags: &RunFlags) -> anyhow::Result<RunArgs> {
    for (name, like) in misspelt_variables() {
        tracing::warn!(
            "ignoring the environment variable {name}: not a run option (did you mean {like}?)"
        );
    }
    if let Some(path) = config_path(flags) {
        check_file(&path)?;
    }
    figment(flags)
        .extract::<RunArgs>()
        .map_err(|e| anyhow::anyhow!(explain(e)))
}

/// figment reads a missing file as an empty one; a config file that was
/// named must exist.
fn check_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("config file {}: not a regular file", path.display()),
        Err(e) => bail!("config file {}: {e}", path.display()),
    }
}

/// One line per error: "<where>: <key>: <what>".
fn explain(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let place = match &e.metadata {
                Some(m) => origin(m, &e.path),
                None => "configuration".into(),
            };
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, _) => {
                    return unknown_key(e.metadata.as_ref(), field);
                }
                kind => kind.to_string(),
            };
            if key.is_empty() {
                format!("{place}: {what}")
            } else {
                format!("{place}: {key}: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An unknown key of the config file (the environment's are filtered out).
fn unknown_key(metadata: Option<&Metadata>, key: &str) -> String {
    match metadata {
        Some(m) => format!(
            "{}: unknown key `{key}` (see auspex run --help)",
            origin(m, &[] as &[&str])
        ),
        None => format!("unknown key `{key}`"),
    }
}

/// Where a value came from, for messages: "config file PATH", "environment
/// variable AUSPEX_X", "flag --x", "default".
fn origin<K: AsRef<str>>(metadata: &Metadata, keys: &[K]) -> String {
    if let Some(path) = metadata.source.as_ref().and_then(|s| s.file_path()) {
        return format!("config file {}", path.display());
    }
    match metadata.name.as_ref() {
        "command line" => format!("flag --{}", flag(keys)),
        name if name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            keys.iter()
                .map(|k| k.as_ref().to_uppercase())
                .collect::<Vec<_>>()
                .join("_")
        ),
        _ => "default".into(),
    }
}

#[cfg(test)]
mod tests;
