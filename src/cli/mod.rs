//! The `thinsnap` command line: one file per command family, all built on
//! the snapshot API so every command works with every backend.

mod container;
mod doctor;
mod fsck;
pub mod image;
mod layer;
mod lifecycle;
mod metadata;
mod pool;
mod progress;
mod serve;
mod snapshots;
mod status;
pub mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Default store root (Docker's is /var/lib/docker; pass it with --root to
/// serve an existing Docker store).
pub const DEFAULT_ROOT: &str = "/var/lib/thinsnap";

#[derive(Debug, Parser)]
#[command(
    name = "thinsnap",
    version,
    about = "Thin-provisioned snapshot manager for container storage"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares: which store, which backend, which options.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Store root; the backend keeps its data in <root>/<driver>.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "THINSNAP_ROOT")]
    pub root: PathBuf,
    /// Backend: auto, devicemapper, overlay2, overlay, aufs, vfs, btrfs.
    #[arg(long, global = true, default_value = "auto", env = "THINSNAP_DRIVER")]
    pub driver: String,
    /// Backend option KEY=VALUE (Docker's dm.* names for devicemapper); repeatable.
    #[arg(
        long = "storage-opt",
        short = 's',
        global = true,
        value_name = "KEY=VALUE"
    )]
    pub storage_opts: Vec<String>,
    /// Log filter (error, warn, info, debug, trace or a tracing directive).
    #[arg(long, global = true, default_value = "warn", env = "THINSNAP_LOG")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report what this host supports and which driver to use.
    Doctor(doctor::DoctorArgs),
    /// Show the store's driver, why it was chosen, and the driver's status.
    Status(status::StatusArgs),
    /// Open (creating on first use) the store: pool and base device for devicemapper.
    Init(lifecycle::InitArgs),
    /// List the store's layers.
    Ls(lifecycle::LsArgs),
    /// Create a layer (a thin snapshot of its parent on devicemapper).
    Create(lifecycle::CreateArgs),
    /// Mount a layer and print the path of its root (stays mounted until `umount`).
    Mount(lifecycle::MountArgs),
    /// Release a layer mounted with `mount`.
    Umount(lifecycle::UmountArgs),
    /// Unmount everything and release kernel resources (the store stays).
    Cleanup(lifecycle::CleanupArgs),
    /// Check a devicemapper store against its pool: orphan thin ids, device
    /// files without thin ids, stale transactions, stray temp files, leaked
    /// mounts and devices; repairs only with --repair.
    Fsck(fsck::FsckArgs),
    /// Docker metadata files of a devicemapper store.
    #[command(subcommand)]
    Metadata(metadata::MetadataCommand),
    /// The thin pool of a devicemapper store: status, usage per device,
    /// health check, extend, autoextend.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Import layer tars as a chain of layers (one per tar, bottom first) and print their ids.
    Import(image::ImportArgs),
    /// Write a layer's changes against its parent as an OCI layer tar to stdout.
    Diff(layer::DiffArgs),
    /// Apply an OCI layer tar (plain, gzip or zstd) from stdin to a layer.
    Apply(layer::ApplyArgs),
    /// List a layer's changes against its parent (`A`/`C`/`D path`).
    Changes(layer::ChangesArgs),
    /// Show a layer: parent, state, mounts, size, backend metadata.
    Inspect(layer::InspectArgs),
    /// Remove a layer.
    Rm(layer::RmArgs),
    /// Container layers (Docker's `<id>-init` + `<id>`).
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Serve the store to containerd as a proxy snapshotter on a unix socket.
    Serve(serve::ServeArgs),
    /// Read or change a served store through the service's socket.
    Snapshots(snapshots::SnapshotsArgs),
}

impl Command {
    /// Commands whose stdout is JSON or a stream get no progress bars.
    fn prints_json(&self) -> bool {
        match self {
            Command::Status(a) => a.json,
            Command::Doctor(a) => a.json,
            Command::Fsck(a) => a.json,
            Command::Ls(a) => a.json,
            Command::Pool(p) => p.json(),
            Command::Snapshots(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Changes(a) => a.json,
            Command::Diff(_) | Command::Serve(_) => true,
            _ => false,
        }
    }
}

/// Runs the CLI and maps the outcome to an exit code; errors are printed
/// as one line per cause.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(&cli.global.log);
    progress::enable(cli.command.prints_json());
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            report_error(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Doctor(args) => doctor::run(&cli.global, &args),
        Command::Status(args) => status::run(&cli.global, &args),
        Command::Init(args) => lifecycle::init(&cli.global, &args),
        Command::Ls(args) => lifecycle::ls(&cli.global, &args),
        Command::Create(args) => lifecycle::create(&cli.global, &args),
        Command::Mount(args) => lifecycle::mount(&cli.global, &args),
        Command::Umount(args) => lifecycle::umount(&cli.global, &args),
        Command::Cleanup(args) => lifecycle::cleanup(&cli.global, &args),
        Command::Metadata(cmd) => metadata::run(&cli.global, &cmd),
        Command::Pool(cmd) => pool::run(&cli.global, &cmd),
        Command::Import(args) => image::run(&cli.global, &args),
        Command::Diff(args) => layer::diff(&cli.global, &args),
        Command::Apply(args) => layer::apply(&cli.global, &args),
        Command::Changes(args) => layer::changes(&cli.global, &args),
        Command::Inspect(args) => layer::inspect(&cli.global, &args),
        Command::Rm(args) => layer::rm(&cli.global, &args),
        Command::Container(cmd) => container::run(&cli.global, &cmd),
        Command::Serve(args) => serve::run(&cli.global, &args, matches),
        Command::Fsck(args) => fsck::run(&cli.global, &args),
        Command::Snapshots(args) => snapshots::run(&cli.global, &args),
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // THINSNAP_LOG_SPANS=1 logs each finished span with its duration: how
    // an admin sees where a slow operation spends its time.
    let spans = if std::env::var_os("THINSNAP_LOG_SPANS").is_some_and(|v| v != "0") {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints `thinsnap: <error>` and each distinct cause below it.
pub fn report_error(e: &dyn std::error::Error) {
    let top = e.to_string();
    eprintln!("thinsnap: {top}");
    let mut seen = top;
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !seen.contains(&msg) {
            eprintln!("  caused by: {msg}");
            seen.push_str(&msg);
        }
        source = s.source();
    }
}
