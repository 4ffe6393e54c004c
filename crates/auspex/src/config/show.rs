//! `auspex config show`: the effective options of `run`, as a YAML file
//! that `--config` reads back, each key with where its value came from.

use std::fmt::Write;

use crate::cli::RunFlags;

/// The effective configuration, one `key: value  # origin` line per option.
pub fn render(flags: &RunFlags) -> anyhow::Result<String> {
    let args = super::resolve(flags)?;
    let figment = super::figment(flags);
    let values = serde_json::to_value(&args)?;
    let mut out = String::from(
        "# auspex run: effective options (flags over AUSPEX_* environment over config file over defaults)\n",
    );
    for (key, value) in values.as_object().expect("options serialise as a map") {
        let origin = match figment.find_metadata(key) {
            Some(m) => super::origin(m, &[key]),
            None => "default".into(),
        };
        // A JSON scalar or array is also a YAML one.
        writeln!(out, "{key}: {value}  # {origin}")?;
    }
    Ok(out)
}

pub fn show(flags: &RunFlags) -> anyhow::Result<()> {
    print!("{}", render(flags)?);
    Ok(())
}
