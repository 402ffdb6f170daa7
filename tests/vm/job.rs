//! What the host asks the guest to run, and what the guest reports back.
//! Both sides read and write these as JSON files in the shared job directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Name of the job file inside the job directory.
pub const JOB_FILE: &str = "job.json";
/// Written by the guest agent after the last step, just before power-off.
pub const DONE_FILE: &str = "done";
/// The agent's own log (leak clean-up, spawn failures).
pub const AGENT_LOG: &str = "agent.log";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub steps: Vec<Step>,
    /// Fail a step that leaves a dm device, loop device or mount behind.
    pub check_leaks: bool,
    /// Stop after the first failed step (scripts); tests run every step.
    #[serde(default)]
    pub stop_on_failure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub timeout_secs: u64,
    /// A header line printed instead of running anything (demo scripts).
    #[serde(default)]
    pub echo_only: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub seconds: f64,
    /// Resources the step left behind (already cleaned up by the agent).
    pub leaks: Vec<String>,
    pub spawn_error: Option<String>,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
            && !self.timed_out
            && self.leaks.is_empty()
            && self.spawn_error.is_none()
    }

    /// One line saying why a step failed.
    pub fn failure(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("could not start: {e}");
        }
        if self.timed_out {
            return format!("timed out after {:.0} s", self.seconds);
        }
        let mut parts = Vec::new();
        match (self.exit_code, self.signal) {
            (Some(0), _) => {}
            (Some(c), _) => parts.push(format!("exit status {c}")),
            (None, Some(s)) => parts.push(format!("killed by signal {s}")),
            (None, None) => parts.push("no exit status".to_string()),
        }
        if !self.leaks.is_empty() {
            parts.push(format!("left behind: {}", self.leaks.join(", ")));
        }
        parts.join("; ")
    }
}

pub fn step_log(index: usize) -> String {
    format!("step-{index}.log")
}

pub fn step_result(index: usize) -> String {
    format!("step-{index}.json")
}
