//! What the functions' benchmarks share: the machine a figure was measured on, the median they
//! quote and the peak memory they report, so every BENCHMARKS.md means the same by each.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

/// The CPU model and the CPUs this process may use, recorded beside every figure.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cpus": std::thread::available_parallelism().map_or(1, |n| n.get())})
}

/// The peak resident set of this process so far (`VmHWM` in /proc/self/status), in MiB; NaN
/// where the kernel does not report it.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The files in `dir` whose extension is `ext`, sorted by path: the inputs a benchmark repeats in
/// a fixed order.
pub fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    paths
}

/// The median of `samples`: the middle one, or the upper of the two middle ones for an even
/// count (a measured sample, never an average of two); NaN when there are none.
pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Wall time of each of `iters` calls to `call`, in milliseconds, after `warmup` untimed calls.
pub fn time_calls(iters: usize, warmup: usize, mut call: impl FnMut()) -> Vec<f64> {
    (0..warmup).for_each(|_| call());
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            call();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// A benchmark's reference implementation in another process (a Python script with its model
/// loaded once), spoken to in JSON lines: one command a line on its stdin, one reply a line on
/// its stdout. Its first line must say `"ready": true`; a reply with an `"error"` fails the
/// benchmark; `{"op": "quit"}` ends it when this is dropped.
pub struct JsonPeer {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The first line it wrote (versions and the like beside `"ready"`).
    pub ready: Value,
}

impl JsonPeer {
    /// Starts `command` with piped stdin and stdout and waits for its ready line; `name` is
    /// what failures call it.
    pub fn start(mut command: Command, name: &str) -> JsonPeer {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = JsonPeer {
            name: name.to_string(),
            child,
            stdin,
            stdout,
            ready: Value::Null,
        };
        peer.ready = peer.read();
        assert_eq!(peer.ready["ready"], true, "{name} did not start");
        peer
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read from {}: {e}", self.name));
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} said {line:?}: {e}", self.name));
        assert!(v.get("error").is_none(), "{}: {}", self.name, v["error"]);
        v
    }

    /// Sends one command and returns its reply.
    pub fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap_or_else(|e| panic!("write to {}: {e}", self.name));
        self.read()
    }

    /// Sends a command that the peer times itself, and returns its `times_ns` in milliseconds
    /// with the whole reply.
    pub fn times(&mut self, command: Value) -> (Vec<f64>, Value) {
        let reply = self.ask(command);
        let ms = reply["times_ns"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no times_ns in {reply}", self.name))
            .iter()
            .map(|t| t.as_f64().unwrap() / 1e6)
            .collect();
        (ms, reply)
    }
}

impl Drop for JsonPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_a_measured_sample() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert!(machine()["cpus"].as_u64().unwrap() >= 1);
        assert!(peak_rss_mib() > 0.0, "this process has touched memory");
        let dir = crate::repo_root().join("tests/support/src");
        let rs = files_with_extension(&dir, "rs");
        assert!(
            rs.ends_with(&[dir.join("lib.rs"), dir.join("moto.rs")]),
            "{rs:?}"
        );
        assert_eq!(rs[0], dir.join("bench.rs"));
    }
}
