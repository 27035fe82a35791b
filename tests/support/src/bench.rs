//! What the functions' benchmarks share: the machine a figure was measured on, the median they
//! quote and the peak memory they report, so every BENCHMARKS.md means the same by each.

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
