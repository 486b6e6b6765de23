//! `warren` processes spawned by tests, and their standard error: read in
//! the background, kept for the test to search, and checked for panics. A
//! panic in a spawned process (a task dying on a worker thread, say) that
//! did not break the response the test asserts would otherwise pass
//! unseen; dropping the watch fails the test instead. With
//! `WARREN_TEST_ECHO` set, every line is also copied to the test's own
//! standard error (with `NODE_LOG=debug`, say, to watch cluster nodes).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::watch,
};

/// Lines kept per process: a trace-level run of a test stays well under it.
const KEPT_LINES: usize = 200_000;

/// A `warren` process and its watched standard error.
pub struct WarrenProcess {
    pub child: tokio::process::Child,
    pub log: StderrWatch,
}

impl WarrenProcess {
    /// Watches `child`'s piped standard error; `what` names it in failures.
    pub fn new(mut child: tokio::process::Child, what: &str) -> WarrenProcess {
        let log = StderrWatch::on(&mut child, what);
        WarrenProcess { child, log }
    }
}

impl std::ops::Deref for WarrenProcess {
    type Target = tokio::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for WarrenProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

/// Sends `signal` (`"-TERM"`, `"-STOP"`, …) to a running child, through
/// kill(1); fails the test if it cannot.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process is running").to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill(1) runs");
    assert!(sent.success(), "kill {signal} {pid} failed");
}

/// A child's standard error, line by line.
pub struct StderrWatch {
    what: String,
    lines: Arc<Mutex<VecDeque<String>>>,
    panics: Arc<Mutex<Vec<String>>>,
    ended: watch::Receiver<bool>,
}

impl StderrWatch {
    /// Takes `child`'s piped standard error and reads it in the background.
    pub fn on(child: &mut tokio::process::Child, what: &str) -> StderrWatch {
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let panics = Arc::new(Mutex::new(Vec::new()));
        let (end, ended) = watch::channel(false);
        let (kept, panicked) = (lines.clone(), panics.clone());
        let echo = std::env::var_os("WARREN_TEST_ECHO").map(|_| what.to_string());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            let mut panic_context = 0;
            while let Ok(Some(line)) = reader.next_line().await {
                // The panic line and a few after it (the message, the
                // location, the first frames) for the failure report.
                if line.contains("panicked at") {
                    panic_context = 4;
                }
                if panic_context > 0 {
                    panic_context -= 1;
                    panicked.lock().unwrap().push(line.clone());
                }
                if let Some(what) = &echo {
                    eprintln!("[{what}] {line}");
                }
                let mut kept = kept.lock().unwrap();
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
            let _ = end.send(true);
        });
        StderrWatch {
            what: what.to_string(),
            lines,
            panics,
            ended,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().cloned().collect()
    }

    /// Everything so far, as one text.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits (up to `within`) for a line containing `needle`.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline || *self.ended.borrow() {
                return self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains(needle));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `within`) until the process closed its standard error,
    /// as it does on exit; whether it did.
    pub async fn closed(&self, within: Duration) -> bool {
        let mut ended = self.ended.clone();
        let closed = tokio::time::timeout(within, ended.wait_for(|e| *e))
            .await
            .is_ok();
        closed
    }
}

impl Drop for StderrWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let panics = self.panics.lock().unwrap();
        assert!(
            panics.is_empty(),
            "{} panicked:\n{}",
            self.what,
            panics.join("\n")
        );
    }
}
