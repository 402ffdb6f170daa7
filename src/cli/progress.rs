//! Terminal progress bars (indicatif) for the library's long tasks. Drawn
//! on stderr, and only when stdout is a terminal and the command prints no
//! JSON, so pipes, scripts and `--json` output stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Bar, Sink, Unit};

struct TermSink;

struct TermBar(ProgressBar);

impl Sink for TermSink {
    fn start(&self, what: &str, total: Option<u64>, unit: Unit) -> Box<dyn Bar> {
        let pb = match total {
            Some(n) => {
                let template = match unit {
                    Unit::Bytes => {
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}"
                    }
                    Unit::Steps => "{prefix} [{bar:30}] {pos}/{len} {wide_msg}",
                };
                let pb = ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(template) {
                    pb.set_style(style.progress_chars("=> "));
                }
                pb
            }
            None => {
                let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                if let Ok(style) =
                    ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
                {
                    pb.set_style(style);
                }
                pb.enable_steady_tick(Duration::from_millis(120));
                pb
            }
        };
        pb.set_prefix(what.to_string());
        Box::new(TermBar(pb))
    }
}

impl Bar for TermBar {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }

    fn finish(&self, outcome: &str) {
        if outcome.is_empty() {
            self.0.finish_and_clear();
        } else {
            self.0.finish_with_message(outcome.to_string());
        }
    }
}

/// Installs the bars unless the command prints JSON or stdout is not a terminal.
pub fn enable(json_output: bool) {
    if !json_output && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        crate::progress::install(Box::new(TermSink));
    }
}
