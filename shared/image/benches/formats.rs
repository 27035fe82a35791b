//! What a phone's 12 MP photo costs to decode, by format: the same picture (the 4000×3000 group
//! photo) as the JPEG, as an iPhone stores it (HEIC, a grid of 512×512 HEVC tiles), as one HEVC
//! picture, and as AVIF. Each measurement runs in a fresh process, so its peak memory is its
//! own: time is the median of the decodes after the first (the first is reported apart, and so
//! is loading the libraries, which the functions do at init), memory the process's peak
//! resident set after them. Beside ours,
//! the Python registry decoders on the same files in the same run (`formats_peer.py`: Pillow's
//! libjpeg-turbo for JPEG, pillow-heif's libheif for HEIC, Pillow's libavif for AVIF), labelled:
//! their library builds are not ours.
//!
//! Isolation: HEIC and AVIF are also decoded the way the hosts decode them, in a decoder child
//! process (this bench's own binary, hooked like theirs), and the difference is the cost of that
//! isolation per decode (the child is started on the first decode and reused after).
//!
//! Run: `make bench-image-formats` (writes the photos with `gen_heif_avif.py --bench-out`, then
//! `cargo bench -p coldpath-image --bench formats`); BENCH_PROCESSES (default 5) processes per
//! file, BENCH_DECODES (default 5) decodes per process. Figures: `target/bench/image-formats.json`
//! and BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use coldpath_image::{CodecPaths, ImageLimits, decode, load_native_codecs};
use coldpath_test_support::bench::{machine, median, peak_rss_mib};
use coldpath_test_support::repo_root;
use serde_json::{Value, json};

const PHOTOS: [&str; 4] = [
    "group8-4000.jpg",
    "group8-4000-grid512.heic",
    "group8-4000.heic",
    "group8-4000.avif",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Child: decode `file` `decodes` times, print one JSON line.
fn child(file: &Path, decodes: usize) {
    let bytes = std::fs::read(file).expect("photo");
    let start_rss = peak_rss_mib();
    let load = Instant::now();
    let status = load_native_codecs(
        &CodecPaths::from_env(&coldpath_core::config::ProcessEnv).expect("decoder settings"),
    );
    let load_ms = load.elapsed().as_secs_f64() * 1e3;
    let limits = ImageLimits::default();
    let mut times = Vec::new();
    let mut size = (0, 0);
    let mut digest = 0u64;
    let mut overheads = Vec::new();
    for _ in 0..decodes {
        let t = Instant::now();
        let (_, before) = coldpath_image::isolation_overhead();
        let img = decode(&bytes, &limits).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let (_, after) = coldpath_image::isolation_overhead();
        overheads.push((after - before).as_secs_f64() * 1e3);
        size = img.image.dimensions();
        digest = fnv1a(img.image.as_raw());
        drop(std::hint::black_box(img));
    }
    let line = json!({
        "load_ms": load_ms,
        "first_ms": times[0],
        "ms": median(&times[1..]),
        // Isolated decodes: their time beyond the library call, as the child timed it.
        "overhead_ms": median(&overheads[1..]),
        "peak_mib": peak_rss_mib(),
        "before_mib": start_rss,
        "size": [size.0, size.1],
        // The pixels' digest: an isolated decode must hand over exactly what the library made.
        "digest": format!("{digest:016x}"),
        "decoder": match file.extension().and_then(|e| e.to_str()) {
            Some("heic") => status.heic.unwrap_or_else(|e| e),
            Some("avif") => status.avif.unwrap_or_else(|e| e),
            _ => "image crate (zune-jpeg)".to_string(),
        },
    });
    println!("{line}");
}

/// FNV-1a over the pixels (outside the timed decode).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn run(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run a measurement");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {text}"))
}

fn field(runs: &[Value], key: &str) -> f64 {
    median(
        &runs
            .iter()
            .map(|r| r[key].as_f64().unwrap())
            .collect::<Vec<_>>(),
    )
}

fn main() {
    coldpath_image::run_decoder_if_asked();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(
            Path::new(&args[i + 1]),
            args[i + 2].parse().expect("decodes"),
        );
        return;
    }
    let dir = std::env::var("BENCH_HEIF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/bench/heif"));
    let processes = env_usize("BENCH_PROCESSES", 5);
    let decodes = env_usize("BENCH_DECODES", 5).max(2);
    let python = std::env::var("COLDPATH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let peer = repo_root().join("shared/image/benches/formats_peer.py");
    let me = std::env::current_exe().expect("own path");
    println!(
        "{} processes a file, {decodes} decodes a process; machine {}",
        processes,
        machine()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "photo",
        "ours ms",
        "first ms",
        "peak MiB",
        "peer ms",
        "peer MiB",
        "ours/peer",
        "isolated ms",
        "iso first"
    );
    let mut rows = Vec::new();
    // Interleaved: each round measures every file once with each decoder, so load on the shared
    // machine falls on all of them alike.
    let mut ours: Vec<Vec<Value>> = vec![Vec::new(); PHOTOS.len()];
    let mut theirs: Vec<Vec<Value>> = vec![Vec::new(); PHOTOS.len()];
    let mut isolated: Vec<Vec<Value>> = vec![Vec::new(); PHOTOS.len()];
    for _ in 0..processes {
        for (i, name) in PHOTOS.iter().enumerate() {
            let file = dir.join(name);
            assert!(
                file.is_file(),
                "{} is missing: run `make bench-image-formats`",
                file.display()
            );
            ours[i].push(run(Command::new(&me)
                .env("COLDPATH_DECODER_ISOLATION", "off")
                .arg("--child")
                .arg(&file)
                .arg(decodes.to_string())));
            isolated[i].push(run(Command::new(&me)
                .env("COLDPATH_DECODER_ISOLATION", "process")
                .arg("--child")
                .arg(&file)
                .arg(decodes.to_string())));
            theirs[i].push(run(Command::new(&python)
                .arg(&peer)
                .arg(&file)
                .arg(decodes.to_string())));
        }
    }
    for (i, name) in PHOTOS.iter().enumerate() {
        for run in &isolated[i] {
            assert_eq!(
                run["digest"], ours[i][0]["digest"],
                "{name}: the decoder process handed over other pixels than the in-process decode"
            );
        }
        let (ms, peer_ms) = (field(&ours[i], "ms"), field(&theirs[i], "ms"));
        let row = json!({
            "photo": name,
            "bytes": std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0),
            "size": ours[i][0]["size"],
            "decoder": ours[i][0]["decoder"],
            "ms": ms,
            "first_ms": field(&ours[i], "first_ms"),
            "load_ms": field(&ours[i], "load_ms"),
            "peak_mib": field(&ours[i], "peak_mib"),
            "before_mib": field(&ours[i], "before_mib"),
            "peer": theirs[i][0]["decoder"],
            "peer_ms": peer_ms,
            "peer_peak_mib": field(&theirs[i], "peak_mib"),
            "isolated_ms": field(&isolated[i], "ms"),
            "isolated_first_ms": field(&isolated[i], "first_ms"),
            "isolation_overhead_ms": field(&isolated[i], "overhead_ms"),
        });
        println!(
            "{:<26} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9.2}x {:>12.1} {:>10.1}",
            name,
            ms,
            row["first_ms"].as_f64().unwrap(),
            row["peak_mib"].as_f64().unwrap(),
            peer_ms,
            row["peer_peak_mib"].as_f64().unwrap(),
            ms / peer_ms,
            row["isolated_ms"].as_f64().unwrap(),
            row["isolated_first_ms"].as_f64().unwrap(),
        );
        rows.push(row);
    }
    println!(
        "loading libheif + libde265 + libavif (load_native_codecs): {:.1} ms",
        field(&ours[1], "load_ms")
    );
    for row in &rows[1..] {
        let (ms, iso) = (
            row["ms"].as_f64().unwrap(),
            row["isolated_ms"].as_f64().unwrap(),
        );
        let overhead = row["isolation_overhead_ms"].as_f64().unwrap();
        println!(
            "{} in a decoder process: {:.1} ms a decode beyond the library call ({:.1}% of the in-process decode; wall {:+.1} ms, {:+.1} ms on the first, which starts the child)",
            row["photo"].as_str().unwrap(),
            overhead,
            overhead / ms * 100.0,
            iso - ms,
            row["isolated_first_ms"].as_f64().unwrap() - row["first_ms"].as_f64().unwrap()
        );
    }
    let jpeg = &rows[0];
    for row in &rows[1..] {
        println!(
            "{} against the JPEG: {:.2}x the time, {:.2}x the peak memory",
            row["photo"].as_str().unwrap(),
            row["ms"].as_f64().unwrap() / jpeg["ms"].as_f64().unwrap(),
            row["peak_mib"].as_f64().unwrap() / jpeg["peak_mib"].as_f64().unwrap()
        );
    }
    let out = repo_root().join("target/bench/image-formats.json");
    let doc =
        json!({"machine": machine(), "processes": processes, "decodes": decodes, "photos": rows});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).expect("write figures");
    println!("figures: {}", out.display());
}
