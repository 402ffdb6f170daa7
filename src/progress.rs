//! Progress of long operations (base-device mkfs, pool extend, layer
//! imports). The library only announces work; the CLI installs a sink that
//! draws bars on a terminal. With no sink installed (library users, the
//! service, `--json`, output to a pipe) every call is a no-op.

use std::sync::OnceLock;

/// What a task counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Steps,
    Bytes,
}

/// Draws progress somewhere (the CLI's terminal bars).
pub trait Sink: Send + Sync {
    /// Starts a task: `total` units of work, or `None` for work whose
    /// length is unknown (a spinner).
    fn start(&self, what: &str, total: Option<u64>, unit: Unit) -> Box<dyn Bar>;
}

/// One running task's display.
pub trait Bar: Send {
    /// Sets how many units are done.
    fn set(&self, done: u64);
    /// Replaces the text beside the bar (the current step).
    fn message(&self, msg: &str);
    /// Ends the task, leaving `outcome` visible.
    fn finish(&self, outcome: &str);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();

/// Installs the process-wide sink; a second call is ignored.
pub fn install(sink: Box<dyn Sink>) {
    let _ = SINK.set(sink);
}

/// A task being reported; dropping it without `finish` clears its bar.
pub struct Task {
    bar: Option<Box<dyn Bar>>,
}

/// Starts reporting `what` in steps, or as a spinner without a total
/// (no-op without a sink).
pub fn task(what: &str, total: Option<u64>) -> Task {
    Task {
        bar: SINK.get().map(|s| s.start(what, total, Unit::Steps)),
    }
}

/// Starts reporting `what` counted in bytes.
pub fn task_bytes(what: &str, total: u64) -> Task {
    Task {
        bar: SINK.get().map(|s| s.start(what, Some(total), Unit::Bytes)),
    }
}

impl Task {
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set(done);
        }
    }

    pub fn message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.message(msg);
        }
    }

    pub fn finish(mut self, outcome: &str) {
        if let Some(b) = self.bar.take() {
            b.finish(outcome);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish("");
        }
    }
}

/// A reader that reports the bytes read through it.
pub struct Reader<R> {
    inner: R,
    task: Task,
    done: u64,
}

impl<R> Reader<R> {
    pub fn new(inner: R, task: Task) -> Reader<R> {
        Reader {
            inner,
            task,
            done: 0,
        }
    }

    pub fn finish(self, outcome: &str) {
        self.task.finish(outcome);
    }
}

impl<R: std::io::Read> std::io::Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.task.set(self.done);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn without_a_sink_everything_is_silent_and_reading_passes_through() {
        let t = task_bytes("nothing", 3);
        t.set(1);
        t.message("step");
        let mut r = Reader::new(&b"abc"[..], t);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        assert_eq!(r.done, 3);
        r.finish("done");
    }
}
