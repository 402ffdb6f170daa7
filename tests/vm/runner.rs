//! `thinsnap-vm`: boots Debian's kernel (which has dm-thin) under QEMU with
//! the host's / shared read-only, runs commands inside as root, and brings
//! their output and exit status back. See docs/testing.md.
//!
//!   thinsnap-vm prepare                      fetch the kernel, build the initramfs
//!   thinsnap-vm run [opts] -- CMD ARGS...    run one command in a fresh VM
//!   thinsnap-vm script FILE [opts]           run a file of commands in one boot
//!   thinsnap-vm test [opts] [-- TEST-ARGS]   build and run every tests/vm_*.rs in one boot

mod guest;
mod host;
mod job;
mod kernel;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use job::{Job, Step};

#[derive(Parser)]
#[command(
    name = "thinsnap-vm",
    about = "Run commands in a QEMU VM whose kernel has dm-thin"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the kernel into the cache and build the initramfs.
    Prepare,
    /// Run one command inside a fresh VM.
    Run {
        #[command(flatten)]
        opts: RunOpts,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Run a file of commands (one per line, `#` lines are headers) in one boot.
    Script {
        file: PathBuf,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// Build the tests/vm_*.rs test binaries and run them all in one boot.
    Test {
        #[command(flatten)]
        opts: RunOpts,
        /// Only these test targets (e.g. vm_smoke); default: every vm_* target.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Arguments for every test binary (a name filter, --nocapture ...).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// (inside the VM) run the job file; started by the initramfs.
    #[command(hide = true)]
    Guest { job: PathBuf },
}

#[derive(Args, Clone)]
struct RunOpts {
    /// Per-step time limit in seconds.
    #[arg(long, default_value_t = 900)]
    step_timeout: u64,
    /// Whole-VM time limit in seconds (THINSNAP_VM_TIMEOUT overrides the default).
    #[arg(long)]
    timeout: Option<u64>,
    /// Attach a raw disk of this size (repeatable): /dev/vda, /dev/vdb, ...
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Extra environment for the command(s), KEY=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Working directory inside the VM (default: the current directory).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Do not fail steps that leave dm devices, loop devices or mounts behind.
    #[arg(long)]
    no_leak_check: bool,
    /// Run the remaining steps after one fails (script and run modes stop;
    /// `test` always runs every test binary).
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Guest { job } => ExitCode::from(guest::run(&job) as u8),
        Cmd::Prepare => match kernel::prepare() {
            Ok((k, initrd)) => {
                println!("kernel   {} ({})", k.version, k.vmlinuz.display());
                println!("modules  {}", k.modules_dir.display());
                println!("initrd   {}", initrd.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Cmd::Run { opts, argv } => {
            let step = make_step(&opts, argv.join(" "), argv);
            run(&opts, vec![step], !opts.keep_going)
        }
        Cmd::Script { file, opts } => match read_script(&file, &opts) {
            Ok(steps) => run(&opts, steps, !opts.keep_going),
            Err(e) => fail(&e),
        },
        Cmd::Test {
            opts,
            targets,
            test_args,
        } => match build_tests(&targets) {
            Ok(bins) if bins.is_empty() => fail("no vm_* test targets were built"),
            Ok(bins) => {
                let steps = bins
                    .into_iter()
                    .map(|(name, exe)| {
                        let mut argv = vec![exe.display().to_string()];
                        argv.extend(test_args.iter().cloned());
                        make_step(&opts, name, argv)
                    })
                    .collect();
                run(&opts, steps, false)
            }
            Err(e) => fail(&e),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("thinsnap-vm: {msg}");
    ExitCode::from(2)
}

fn make_step(opts: &RunOpts, name: String, argv: Vec<String>) -> Step {
    Step {
        name,
        argv,
        env: opts
            .env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        cwd: opts
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/")),
        timeout_secs: opts.step_timeout,
        echo_only: false,
    }
}

/// One command per line, split on whitespace (no shell); `# text` lines
/// become headers in the output.
fn read_script(file: &Path, opts: &RunOpts) -> Result<Vec<Step>, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let mut steps = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(header) = line.strip_prefix('#') {
            let mut s = make_step(opts, header.trim().to_string(), Vec::new());
            s.echo_only = true;
            steps.push(s);
        } else {
            let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
            steps.push(make_step(opts, line.to_string(), argv));
        }
    }
    Ok(steps)
}

fn run(opts: &RunOpts, steps: Vec<Step>, stop_on_failure: bool) -> ExitCode {
    let (kernel, initrd) = match kernel::prepare() {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let total_default = opts
        .step_timeout
        .saturating_mul(steps.len() as u64)
        .saturating_add(120);
    let mut config =
        host::VmConfig::from_env(Duration::from_secs(opts.timeout.unwrap_or(total_default)));
    if let Some(t) = opts.timeout {
        config.timeout = Duration::from_secs(t);
    }
    for d in &opts.disks {
        match thinsnap::units::parse_size(d) {
            Ok(b) => config.disks.push(b.0),
            Err(e) => return fail(&e.to_string()),
        }
    }
    let job = Job {
        steps,
        check_leaks: !opts.no_leak_check,
        stop_on_failure,
    };
    eprintln!(
        "thinsnap-vm: booting {} ({}, {} MiB, {} CPUs) for {} step(s)",
        kernel.version,
        if config.kvm { "KVM" } else { "TCG" },
        config.memory_mb,
        config.cpus,
        job.steps.iter().filter(|s| !s.echo_only).count()
    );
    let outcome = match host::run_job(&kernel, &initrd, &job, &config) {
        Ok(o) => o,
        Err(e) => return fail(&e.to_string()),
    };
    let mut failed = 0;
    eprintln!("\nthinsnap-vm: summary");
    for r in outcome
        .results
        .iter()
        .zip(&job.steps)
        .filter(|(_, s)| !s.echo_only)
        .map(|(r, _)| r)
    {
        if r.passed() {
            eprintln!("  ok      {:<40} {:>7.1} s", r.name, r.seconds);
        } else {
            failed += 1;
            eprintln!(
                "  FAILED  {:<40} {:>7.1} s  {}",
                r.name,
                r.seconds,
                r.failure()
            );
        }
    }
    let ran = outcome.results.len();
    if ran < job.steps.len() {
        eprintln!("  {} step(s) never ran", job.steps.len() - ran);
    }
    if let Some(e) = &outcome.infra_error {
        eprintln!("thinsnap-vm: {e}");
    }
    if let Some(p) = &outcome.kept_logs {
        eprintln!(
            "thinsnap-vm: logs kept in {} (console.log is the serial console)",
            p.display()
        );
    }
    if outcome.infra_error.is_some() {
        ExitCode::from(2)
    } else if failed > 0 || ran < job.steps.len() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Builds the vm test targets and returns (target name, executable).
fn build_tests(only: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "--features",
        "vm-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if only.is_empty() {
        cmd.args(["--test", "vm_*"]);
    } else {
        for t in only {
            cmd.args(["--test", t]);
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err("building the VM tests failed (see the compiler output above)".into());
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if v["target"]["kind"][0] == "test" && name.starts_with("vm_") {
            bins.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    Ok(bins)
}
