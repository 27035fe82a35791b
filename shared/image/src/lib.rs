//! Image input shared by the image functions (faces, captioning).
//!
//! A request names its image with an [`ImageRef`] (`{"s3": "s3://bucket/key"}`,
//! `{"base64": "..."}` or, in local invoke mode only, `{"path": "..."}`). An [`ImageLoader`]
//! built once at init turns it into bytes (S3 through any [`coldpath_io::ObjectFetcher`],
//! bounded by [`ImageLimits::max_bytes`]) and then into a [`DecodedImage`]: upright (EXIF
//! orientation applied) RGB8 pixels, decoded from JPEG, PNG, WebP, HEIC or AVIF with the size
//! checked from the header before any pixel buffer is allocated (HEIC and AVIF through libheif
//! and libavif, loaded at run time: [`native`]). Models then take [`resize`]d or
//! [`letterbox`]ed images packed by [`to_nchw`], and [`Letterbox`] maps their outputs back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coldpath_image::ImageError> {
//! use coldpath_image::{ChannelOrder, ImageLimits, ImageLoader, ImageRef, Rgb, letterbox, to_nchw};
//! use coldpath_io::LocalObjectDir;
//!
//! let loader = ImageLoader::new(LocalObjectDir::new("events/data"), ImageLimits::default(), true);
//! let image: ImageRef = serde_json::from_str(r#"{"s3": "s3://photos/cat.jpg"}"#).unwrap();
//! let decoded = loader.load(&image).await?;
//! let (canvas, lb) = letterbox(&decoded.image, 640, 640, Rgb([0, 0, 0]));
//! let input = to_nchw(&[&canvas], ChannelOrder::Bgr, 1.0, [0.0; 3], [1.0; 3])?;
//! // ... run the model on `input`, then map a box back to the photo:
//! let box_in_photo = lb.box_to_original([10.0, 20.0, 100.0, 200.0]);
//! # let _ = (input, box_in_photo); Ok(()) }
//! ```
//!
//! Which resampling: [`resize`] is bilinear with antialiasing when shrinking (PIL's and `image`'s
//! semantics: for PyTorch/PIL-trained models such as captioning encoders); [`resize_linear`] is
//! OpenCV's `INTER_LINEAR` (for OpenCV references such as YuNet, whose recipe is
//! [`letterbox_with`] `{ fill: black, anchor: TopLeft, resample: Linear, fit: Round }`;
//! insightface's SCRFD takes [`Fit::InsightFace`]). Both use fast_image_resize, chosen by
//! measurement (`shared/image/BENCHMARKS.md`). [`orient`] is the EXIF turn [`decode`] applies,
//! public for callers that hold raw pixels.
//!
//! Configuration: [`ImageLimits::from_env`] reads `COLDPATH_IMAGE_MAX_BYTES`,
//! `COLDPATH_IMAGE_MAX_PIXELS` and `COLDPATH_IMAGE_MAX_SIDE` once at init.
//!
//! Every failure is an [`ImageError`] that implements [`coldpath_core::Classify`]: bad,
//! oversized or undecodable input and missing objects are `InvalidInput`, transient fetch
//! failures `Retryable`, a missing object store `Config`. Nothing here panics on input.

mod decode;
mod error;
mod geometry;
mod isobmff;
mod limits;
mod loader;
pub mod native;
mod orient;
mod source;
mod tensor;

pub use decode::{DecodedImage, Format, decode, dimensions};
pub use error::ImageError;
pub use geometry::{
    Anchor, Fit, Letterbox, LetterboxOptions, Resample, clamp_box, letterbox, letterbox_with,
    resize, resize_linear,
};
pub use limits::ImageLimits;
pub use loader::ImageLoader;
pub use native::{
    CodecPaths, CodecStatus, Isolation, isolation_overhead, load_native_codecs,
    run_decoder_if_asked,
};
pub use orient::orient;
pub use source::ImageRef;
pub use tensor::{ChannelOrder, to_nchw};

/// The `image` crate this one is built on, so callers use the same version's types.
pub use image;
pub use image::{Rgb, RgbImage};
