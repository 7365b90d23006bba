//! The steps both binaries' `main` take around their own work: loading the config file,
//! refusing a configuration that cannot work, and concluding `validate`.

use std::collections::BTreeSet;
use std::future::Future;
use std::process::ExitCode;

use crate::config_file::{self, FileSettings};
use crate::settings::{ConfigError, Shared};

/// A binary's configuration as parsed, with where each setting came from.
#[derive(Debug)]
pub struct Started<C> {
    pub config: C,
    pub matches: clap::ArgMatches,
    pub file: FileSettings,
}

/// Loads the config file into the environment (so call it before any thread starts), installs
/// the logs and parses the command line with `parse`. A file that cannot be read or names an
/// unknown setting is refused: `{binary}: {why}` and exit 2.
pub fn start<C>(
    binary: &str,
    variables: &BTreeSet<String>,
    parse: impl FnOnce(&FileSettings) -> (C, clap::ArgMatches),
) -> Result<Started<C>, ExitCode> {
    let file = config_file::load(variables).map_err(|why| refuse(binary, &why))?;
    crate::init_logs();
    let (config, matches) = parse(&file);
    Ok(Started {
        config,
        matches,
        file,
    })
}

impl<C: Clone> Started<C> {
    /// `validate`'s first steps: one line per setting of `command`, then the checks of
    /// [`Shared::check_apart`] (its `Shared` is `shared`) into `problems`.
    pub fn report(
        &self,
        command: &clap::Command,
        shared: fn(&mut C) -> &mut Shared,
        validate: fn(&C) -> Vec<ConfigError>,
        problems: &mut Vec<String>,
    ) {
        config_file::print_report(command, &self.matches, &self.file);
        Shared::check_apart(&self.config, shared, validate, problems);
    }
}

/// `{binary}: {why}` on stderr, and exit 2: a configuration that cannot work.
pub fn refuse(binary: &str, why: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{binary}: {why}");
    ExitCode::from(2)
}

/// The end of `validate`: each problem (exit 2), else `configuration: ok`; then with
/// `connect`, whether what `reach` tries answers (exit 1 when something does not).
pub fn conclude<F: Future<Output = bool>>(
    binary: &str,
    problems: &[String],
    connect: bool,
    reach: impl FnOnce() -> F,
) -> ExitCode {
    if let Err(code) = config_file::print_problems(problems) {
        return code;
    }
    println!("configuration: ok");
    if !connect {
        return ExitCode::SUCCESS;
    }
    let runtime = match crate::runtime(binary) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if runtime.block_on(reach()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
