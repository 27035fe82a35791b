//! What image input costs per request: decoding the committed sample photos and packing a
//! 640x640 tensor. Informational (no competing implementation); figures in BENCHMARKS.md.
//!
//! Run: `cargo bench -p coldpath-image --bench decode`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use coldpath_image::{ChannelOrder, ImageLimits, RgbImage, decode, orient, to_nchw};
use image::DynamicImage;
use image::metadata::Orientation;

const ROUNDS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(label: &str, iters: u32, mut f: impl FnMut()) {
    f(); // warm-up
    let rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters
        })
        .collect();
    println!(
        "  {label:<48} {:>9.3} ms",
        median(rounds).as_secs_f64() * 1e3
    );
}

fn main() {
    let photos = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/data/photos/");
    let limits = ImageLimits::default();
    println!("rounds: {ROUNDS}, median per call");
    for (name, iters) in [
        ("kafka.jpg", 20),
        ("group.jpg", 5),
        ("group-exif6.jpg", 5),
        ("grey.png", 20),
    ] {
        let bytes = std::fs::read(format!("{photos}{name}")).expect("sample photo");
        let size = decode(&bytes, &limits).expect("decodes").image.dimensions();
        time(
            &format!(
                "decode {name} ({}x{}, {} KB)",
                size.0,
                size.1,
                bytes.len() / 1024
            ),
            iters,
            || {
                black_box(decode(black_box(&bytes), &limits).ok());
            },
        );
    }
    // EXIF orientation 6 (a portrait phone photo): `image`'s apply_orientation against the
    // tiled `orient` that decode uses, same buffers, alternating in each round.
    for (w, h, iters) in [(1600, 1000, 10), (4000, 3000, 2)] {
        let src = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        time(
            &format!("orientation 6 {w}x{h}: image apply_orientation"),
            iters,
            || {
                let mut d = DynamicImage::ImageRgb8(src.clone());
                d.apply_orientation(Orientation::Rotate90);
                black_box(d);
            },
        );
        time(
            &format!("orientation 6 {w}x{h}: coldpath orient"),
            iters,
            || {
                black_box(orient(src.clone(), 6));
            },
        );
        time(
            &format!("clone only {w}x{h} (in both of the above)"),
            iters,
            || {
                black_box(src.clone());
            },
        );
    }
    let canvas = RgbImage::from_fn(640, 640, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    time("to_nchw 1x3x640x640 (BGR, raw 0..255)", 50, || {
        black_box(to_nchw(&[&canvas], ChannelOrder::Bgr, 1.0, [0.0; 3], [1.0; 3]).ok());
    });
    time("to_nchw 1x3x640x640 (RGB, ImageNet mean/std)", 50, || {
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        black_box(to_nchw(&[&canvas], ChannelOrder::Rgb, 1.0 / 255.0, mean, std).ok());
    });
}
