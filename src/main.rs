//! The `thinsnap` command: storage-admin CLI and service entry point.

fn main() -> std::process::ExitCode {
    thinsnap::cli::main()
}
