use clap::Parser;
use figment::Jail;

use super::*;
use crate::cli::{Cli, Command};

/// The run flags of a command line.
fn flags(args: &[&str]) -> RunFlags {
    let argv = ["auspex", "run"].iter().chain(args);
    match Cli::try_parse_from(argv).expect("flags parse").command {
        Command::Run(flags) => *flags,
        _ => unreachable!(),
    }
}

fn as_json(args: &RunArgs) -> serde_json::Value {
    serde_json::to_value(args).unwrap()
}

/// Runs `f` with a clean environment and a scratch directory (figment's
/// Jail serialises the tests that change the environment).
#[allow(clippy::result_large_err)] // figment's own error type
fn jailed(f: impl FnOnce(&mut Jail) -> Result<(), String>) {
    Jail::expect_with(|jail| {
        for (key, _) in std::env::vars() {
            if key.starts_with(ENV_PREFIX) {
                std::env::remove_var(&key);
            }
        }
        f(jail).map_err(Into::into)
    });
}

fn error(flags: &RunFlags) -> String {
    format!("{:#}", resolve(flags).expect_err("resolving should fail"))
}

#[test]
fn nothing_given_is_the_defaults() {
    jailed(|_| {
        let args = resolve(&flags(&[])).unwrap();
        assert_eq!(as_json(&args), as_json(&RunArgs::default()));
        Ok(())
    });
}

#[test]
fn flags_override_environment_overrides_file_overrides_defaults() {
    jailed(|jail| {
        jail.create_file(
            "auspex.yaml",
            "method: proc\nring_buffer_size: 16M\nafterglow: 10\nreport: both\n\
             never_aggregate: [10.0.0.0/8]\nlisten: off\n",
        )
        .unwrap();
        jail.set_env("AUSPEX_METHOD", "ebpf");
        jail.set_env("AUSPEX_AFTERGLOW", "2.5");
        let f = flags(&["--config", "auspex.yaml", "--method", "core_bpf"]);
        let args = resolve(&f).map_err(|e| e.to_string())?;
        assert_eq!(args.method, "core_bpf");
        assert_eq!(args.afterglow, Duration::from_millis(2500));
        assert_eq!(args.ring_buffer_size, 16 << 20);
        assert_eq!(args.report, Report::Both);
        assert_eq!(args.listen, Listen(None));
        assert_eq!(args.never_aggregate, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(args.delta_interval, Duration::from_secs(30));

        let shown = show::render(&f).map_err(|e| e.to_string())?;
        let line = |key: &str| {
            shown
                .lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .unwrap_or_else(|| panic!("no {key} in\n{shown}"))
                .to_string()
        };
        assert_eq!(line("method"), r#"method: "core_bpf"  # flag --method"#);
        assert_eq!(
            line("afterglow"),
            "afterglow: 2.5  # environment variable AUSPEX_AFTERGLOW"
        );
        assert_eq!(
            line("ring_buffer_size"),
            r#"ring_buffer_size: "16M"  # config file auspex.yaml"#
        );
        assert_eq!(line("delta_interval"), "delta_interval: 30.0  # default");
        Ok(())
    });
}

#[test]
fn what_config_show_prints_reads_back_the_same() {
    jailed(|jail| {
        jail.set_env("AUSPEX_NEVER_AGGREGATE", "10.0.0.0/8, 192.168.0.0/16");
        jail.set_env("AUSPEX_GRPC_LISTEN", "127.0.0.1:9090");
        let first = resolve(&flags(&["--btf", "/x.btf", "--ring-buffer-size", "64K"]))
            .map_err(|e| e.to_string())?;
        let shown = show::render(&flags(&["--btf", "/x.btf", "--ring-buffer-size", "64K"]))
            .map_err(|e| e.to_string())?;
        jail.create_file("shown.yaml", &shown).unwrap();
        std::env::remove_var("AUSPEX_NEVER_AGGREGATE");
        std::env::remove_var("AUSPEX_GRPC_LISTEN");
        let again = resolve(&flags(&["--config", "shown.yaml"])).map_err(|e| e.to_string())?;
        assert_eq!(as_json(&first), as_json(&again), "{shown}");
        Ok(())
    });
}

#[test]
fn a_bad_file_is_one_line_naming_the_key() {
    jailed(|jail| {
        let cases = [
            ("metod: ebpf\n", "unknown key `metod`"),
            (
                "method: modern\n",
                "method: 'modern' is not a collection method (one of: auto, core_bpf, ebpf, proc)",
            ),
            (
                "connection_rate_limit: lots\n",
                "connection_rate_limit: invalid type: found string \"lots\", expected u32",
            ),
            (
                "ring_buffer_size: 3M\n",
                "ring_buffer_size: 3M must be a power of two of at least 4K",
            ),
            (
                "heartbeat_interval: 1e19\n",
                "heartbeat_interval: 10000000000000000000 seconds is out of range",
            ),
            ("listen: 8080\n", "listen: '8080' is not an address:port"),
            (
                "aggregate_public: maybe\n",
                "aggregate_public: invalid type",
            ),
            (
                "never_aggregate: [10.0.0.0/33]\n",
                "never_aggregate: '10.0.0.0/33' is not a network",
            ),
            ("method: [a\n", "line 1"),
        ];
        for (text, expected) in cases {
            jail.create_file("bad.yaml", text).unwrap();
            let message = error(&flags(&["--config", "bad.yaml"]));
            assert!(
                message.starts_with("config file ") && message.contains("bad.yaml"),
                "{text:?}: {message}"
            );
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{text:?}: {message}");
        }
        Ok(())
    });
}

#[test]
fn a_missing_config_file_is_an_error() {
    jailed(|_| {
        let message = error(&flags(&["--config", "/nonexistent/auspex.yaml"]));
        assert!(message.contains("/nonexistent/auspex.yaml"), "{message}");
        assert!(message.contains("No such file"), "{message}");
        Ok(())
    });
}

#[test]
fn the_environment_names_its_variable() {
    jailed(|jail| {
        // Not an option: ignored, as the environment is shared with the
        // scripts that start the agent; a misspelt option is warned about.
        jail.set_env("AUSPEX_METOD", "ebpf");
        jail.set_env("AUSPEX_RINGBUFFER_SIZE", "1M");
        jail.set_env("AUSPEX_KERNEL_MATRIX", "off");
        assert_eq!(
            misspelt_variables(),
            [
                ("AUSPEX_METOD".to_string(), "AUSPEX_METHOD".to_string()),
                (
                    "AUSPEX_RINGBUFFER_SIZE".to_string(),
                    "AUSPEX_RING_BUFFER_SIZE".to_string()
                )
            ]
        );
        assert_eq!(resolve(&flags(&[])).unwrap().method, "auto");
        for name in [
            "AUSPEX_METOD",
            "AUSPEX_RINGBUFFER_SIZE",
            "AUSPEX_KERNEL_MATRIX",
        ] {
            std::env::remove_var(name);
        }

        jail.set_env("AUSPEX_RING_BUFFER_SIZE", "3M");
        let message = error(&flags(&[]));
        assert!(
            message.starts_with("environment variable AUSPEX_RING_BUFFER_SIZE: ring_buffer_size: 3M must be a power of two"),
            "{message}"
        );
        std::env::remove_var("AUSPEX_RING_BUFFER_SIZE");

        // Not options: the test suite's settings and Kubernetes service
        // links for a Service named auspex.
        jail.set_env("AUSPEX_TEST_TIME_SCALE", "8");
        jail.set_env("AUSPEX_SERVICE_HOST", "10.0.0.1");
        jail.set_env("AUSPEX_PORT_8080_TCP_ADDR", "10.0.0.1");
        jail.set_env("AUSPEX_PORT", "tcp://10.0.0.1:8080");
        resolve(&flags(&[])).map_err(|e| e.to_string())?;
        assert!(
            misspelt_variables().is_empty(),
            "{:?}",
            misspelt_variables()
        );

        jail.create_file("from-env.yaml", "method: proc\n").unwrap();
        jail.set_env(CONFIG_ENV, "from-env.yaml");
        assert_eq!(resolve(&flags(&[])).unwrap().method, "proc");
        Ok(())
    });
}

#[test]
fn aggregate_public_can_be_undone_by_a_flag() {
    jailed(|jail| {
        jail.create_file("a.yaml", "aggregate_public: true\n")
            .unwrap();
        let on = resolve(&flags(&["--config", "a.yaml"])).unwrap();
        assert!(on.aggregate_public);
        let off = resolve(&flags(&["--config", "a.yaml", "--aggregate-public=false"])).unwrap();
        assert!(!off.aggregate_public);
        let flag = resolve(&flags(&["--aggregate-public"])).unwrap();
        assert!(flag.aggregate_public);
        Ok(())
    });
}

/// The defaults the help text states are the ones applied.
#[test]
fn documented_defaults_are_the_real_ones() {
    use clap::CommandFactory;
    let defaults = as_json(&RunArgs::default());
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    let mut checked = 0;
    for arg in run.get_arguments() {
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string());
        let Some(help) = help else { continue };
        let Some(stated) = help.split("[default: ").nth(1) else {
            continue;
        };
        let stated = stated.split(']').next().unwrap().trim();
        let key = arg.get_id().as_str();
        let actual = &defaults[key];
        let actual = match actual {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.as_f64().unwrap().to_string(),
            other => other.to_string(),
        };
        let stated_norm = stated
            .parse::<f64>()
            .map(|n| n.to_string())
            .unwrap_or(stated.to_string());
        assert_eq!(stated_norm, actual, "--{key}");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} defaults found in the help");
}

/// The extremes of every numeric option, found from the CLI definition
/// (so a new one is covered): each is accepted or refused with a message
/// naming the flag (or, from a file, the key); none panics. What is
/// accepted at the top of each range is run for real in tests/config.rs.
#[test]
fn extremes_of_every_numeric_option_are_accepted_or_named() {
    use clap::CommandFactory;
    const EXTREMES: &[&str] = &[
        "0",
        "0.05",
        "0.1",
        "1",
        "86400",
        "86400.5",
        "-1",
        "-0",
        "1e19",
        "1e-300",
        "NaN",
        "inf",
        "4294967295",
        "4294967296",
        "18446744073709551616",
        "17179869185G",
        "1G",
        "2G",
        "",
        " ",
        "0x10",
    ];
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    let numeric: Vec<String> = run
        .get_arguments()
        .filter(|a| {
            a.get_value_names().is_some_and(|n| {
                n.iter()
                    .any(|n| ["SECONDS", "BYTES", "N"].contains(&n.as_str()))
            })
        })
        .map(|a| a.get_id().to_string())
        .collect();
    assert!(numeric.len() >= 7, "{numeric:?}");
    jailed(|jail| {
        for key in &numeric {
            let flag = format!("--{}", key.replace('_', "-"));
            for value in EXTREMES {
                let parsed = Cli::try_parse_from(["auspex", "run", &format!("{flag}={value}")]);
                if let Err(e) = &parsed {
                    let text = e.to_string();
                    assert!(text.contains(&flag), "{flag} {value:?}: {text}");
                }
                jail.create_file("x.yaml", &format!("{key}: {value:?}\n"))
                    .unwrap();
                if let Err(e) = resolve(&flags(&["--config", "x.yaml"])) {
                    let text = format!("{e:#}");
                    assert!(
                        text.contains(&format!(": {key}: ")),
                        "{key}: {value:?}: {text}"
                    );
                }
            }
        }
        Ok(())
    });
}
