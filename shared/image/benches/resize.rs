//! Resizer choice for `coldpath_image::resize`: fast_image_resize against `image::imageops`.
//!
//! Run: `cargo bench -p coldpath-image --bench resize` (release build). Both resizers get the
//! same in-memory images and the same output sizes; each round times a short chunk of every
//! contender in turn (so drift in machine load hits all of them), and the report gives the
//! median per-resize time over the rounds. Figures go into `shared/image/BENCHMARKS.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use coldpath_image::{RgbImage, resize, resize_linear};
use image::Rgb;
use image::imageops::FilterType;

const ROUNDS: usize = 9;

/// A photo-like test card: smooth gradients plus fine high-contrast texture, so neither
/// resizer can take a shortcut on flat regions.
fn card(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let texture = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7) as u8;
        Rgb([
            (fx * 255.0) as u8 ^ (texture & 0x1f),
            (fy * 255.0) as u8,
            (((fx * 17.0).sin() * (fy * 11.0).cos()) * 127.0 + 128.0) as u8,
        ])
    })
}

type Contender = (&'static str, fn(&RgbImage, u32, u32) -> RgbImage);

fn image_triangle(src: &RgbImage, w: u32, h: u32) -> RgbImage {
    image::imageops::resize(src, w, h, FilterType::Triangle)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let contenders: [Contender; 3] = [
        ("fast_image_resize Convolution(Bilinear) [resize]", resize),
        ("image::imageops::resize Triangle", image_triangle),
        (
            "fast_image_resize Interpolation(Bilinear) [resize_linear]",
            resize_linear,
        ),
    ];
    let cases = [
        ("1280x886 -> 640x443", card(1280, 886), 640, 443, 20),
        ("4000x3000 -> 640x480", card(4000, 3000), 640, 480, 3),
        (
            "450x655 -> 440x640 (letterbox 640)",
            card(450, 655),
            440,
            640,
            40,
        ),
    ];
    println!("machine: {}", machine());
    println!("rounds: {ROUNDS}, median per resize\n");
    for (name, src, w, h, iters) in &cases {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
        for (_, f) in &contenders {
            black_box(f(src, *w, *h)); // warm-up: page in the source, size the buffers
        }
        for _ in 0..ROUNDS {
            for (i, (_, f)) in contenders.iter().enumerate() {
                let start = Instant::now();
                for _ in 0..*iters {
                    black_box(f(black_box(src), *w, *h));
                }
                times[i].push(start.elapsed() / *iters);
            }
        }
        println!("{name}");
        for ((label, _), t) in contenders.iter().zip(times) {
            println!("  {label:<60} {:>9.3} ms", median(t).as_secs_f64() * 1e3);
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpu}, {} logical CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}
