//! `thinsnap serve`: run the containerd snapshotter (see `crate::service`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, parser::ValueSource};

use super::GlobalArgs;
use crate::service::config::{self, Overrides};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to serve on (created mode 0600) [default: /run/thinsnap/thinsnap.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file (TOML, or JSON by extension) with root, driver,
    /// storage_opts, socket; flags override it [default:
    /// /etc/thinsnap/config.toml or .json when present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Threads that delete removed snapshots' layers after `Remove` has
    /// returned; 0 deletes before it returns [default: 4].
    #[arg(long, value_name = "N")]
    pub remove_workers: Option<usize>,
}

/// True when the user gave global flag `id` (command line or environment),
/// not when clap filled in its default.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

pub fn run(
    global: &GlobalArgs,
    args: &ServeArgs,
    matches: &ArgMatches,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let file = config::load(args.config.as_deref())?;
    let overrides = Overrides {
        root: given(matches, "root").then(|| global.root.clone()),
        driver: given(matches, "driver").then(|| global.driver.clone()),
        storage_opts: global.storage_opts.clone(),
        socket: args.socket.clone(),
        remove_workers: args.remove_workers,
    };
    let cfg = config::resolve(file, overrides);
    crate::service::server::run(&cfg)?;
    Ok(ExitCode::SUCCESS)
}
