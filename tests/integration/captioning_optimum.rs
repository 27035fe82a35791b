//! Captioning parity with transformers on models made by optimum's own exporter.
//!
//! Models: `tests/fixtures/captioning/optimum-vit-gpt2-tiny{,-split}/` (a seeded random ViT +
//! GPT-2 `VisionEncoderDecoderModel`, 300-token vocabulary laid out like GPT-2's) and
//! `optimum-vit-gpt2-vocab/` (the same with GPT-2's 50257-token layout, `<|endoftext|>` = 50256),
//! exported by `optimum.exporters.onnx.main_export(task="image-to-text-with-past")`: the merged
//! decoder with `use_cache_branch`, and the split pair. Reference: transformers' own
//! `generate()` on the same `pixel_values` (`<model>.reference.json`). Both written by
//! `tests/fixtures/captioning/gen_optimum_fixtures.py` (`make fixtures-captioning`, in its own
//! venv: this test needs no torch). The generator also checked that optimum's onnxruntime model
//! gives the same ids and that each greedy step wins by a clear logit margin, so ids may be
//! compared EXACTLY although the reference ran in torch and this runs in ONNX Runtime.
//! `optimum-vit-gpt2-tiny-hoisted/` is the merged export after `tools/hoist_cross_attention.py`
//! (`gen_hoisted_fixtures.py`), held to the same references.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coldpath_captioning::model::{CaptionModel, DecodeOptions};
use coldpath_test_support::repo_root;
use serde::Deserialize;

use crate::captioning_common::{RefImage, batch, load_model, with_generation};

#[derive(Debug, Deserialize)]
struct Reference {
    eos_token_id: u32,
    images: BTreeMap<String, RefImage>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    images: Vec<String>,
    num_beams: usize,
    max_new_tokens: usize,
    /// Passed to `generate()`; patched into a copy of generation_config.json here.
    generation_overrides: serde_json::Map<String, serde_json::Value>,
    token_ids: Vec<Vec<u32>>,
    texts: Vec<String>,
}

const TINY: &str = "optimum-vit-gpt2-tiny";
const VOCAB: &str = "optimum-vit-gpt2-vocab";

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/captioning")
}

fn reference(model: &str) -> &'static Reference {
    static REFS: OnceLock<BTreeMap<&'static str, Reference>> = OnceLock::new();
    let refs = REFS.get_or_init(|| {
        [TINY, VOCAB]
            .into_iter()
            .map(|m| {
                let path = fixtures().join(format!("{m}.reference.json"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let r = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (m, r)
            })
            .collect()
    });
    &refs[model]
}

/// Loads `dir` (a copy with `overrides` patched into generation_config.json when there are any).
fn load(
    dir: &Path,
    layout: &str,
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> CaptionModel {
    let copy = (!overrides.is_empty()).then(|| with_generation(dir, overrides));
    let dir = copy.as_ref().map_or(dir, |c| c.path());
    load_model(dir, layout, &[]).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

/// Every case of `model`'s reference, decoded from `dir` in `layout` in each cache mode: token
/// ids and texts equal transformers' exactly.
fn assert_parity(model: &str, dir: &str, layout: &str, cache_modes: &[bool]) {
    let reference = reference(model);
    assert!(reference.cases.len() >= 10, "{model}: too few cases");
    let dir = fixtures().join(dir);
    let mut checked = 0;
    for case in &reference.cases {
        let captioner = load(&dir, layout, &case.generation_overrides);
        let pixels = batch(&reference.images, &case.images);
        let limits = vec![Some(case.max_new_tokens); case.images.len()];
        for &use_cache in cache_modes {
            let options = DecodeOptions {
                num_beams: case.num_beams,
                use_cache,
            };
            let captions = captioner
                .caption_pixels_with(pixels.view(), &limits, &options)
                .unwrap_or_else(|e| panic!("{model} {}: {e}", case.name));
            let ids: Vec<_> = captions.iter().map(|c| c.token_ids.clone()).collect();
            assert_eq!(
                ids, case.token_ids,
                "{model} {} {layout} use_cache={use_cache}",
                case.name
            );
            let texts: Vec<_> = captions.iter().map(|c| c.text.clone()).collect();
            assert_eq!(texts, case.texts, "{model} {} {layout}", case.name);
            checked += 1;
        }
    }
    assert_eq!(checked, cache_modes.len() * reference.cases.len());
}

#[test]
fn optimum_merged_decoder_matches_transformers_generate() {
    assert_parity(TINY, TINY, "merged", &[true, false]);
}

/// The merged decoder after `tools/hoist_cross_attention.py` (cross-attention keys and values
/// computed once per batch by `decoder_cross_model.onnx`; fixture from
/// `gen_hoisted_fixtures.py`): the same token ids as transformers in every case, greedy and beam,
/// the mixed batch with per-image stopping included, with and without the cache.
#[test]
fn optimum_hoisted_merged_decoder_matches_transformers_generate() {
    assert_parity(TINY, &format!("{TINY}-hoisted"), "merged", &[true, false]);
}

#[test]
fn optimum_split_decoders_match_transformers_generate() {
    assert_parity(TINY, &format!("{TINY}-split"), "split", &[true, false]);
}

#[test]
fn optimum_gpt2_vocabulary_model_matches_transformers_generate() {
    // With the cache only: without it every step re-runs the decoder over the prefix and
    // ranks 50257 × beams candidates, minutes in a debug build; the tiny model covers both modes.
    assert_parity(VOCAB, VOCAB, "merged", &[true]);
    // GPT-2's layout: 50257 ids, <|endoftext|> last, start = eos.
    let reference = reference(VOCAB);
    assert_eq!(reference.eos_token_id, 50256);
    let captioner = load(&fixtures().join(VOCAB), "merged", &Default::default());
    assert_eq!(captioner.generation().decoder_start_token_id, 50256);
    assert_eq!(captioner.generation().eos_token_ids, vec![50256]);
}

/// The references exercise what they claim: the mixed batch stops at different steps and some
/// captions end on EOS, and beam search differs from greedy somewhere.
#[test]
fn optimum_references_cover_per_image_stopping_and_beams() {
    for model in [TINY, VOCAB] {
        let reference = reference(model);
        let greedy = reference
            .cases
            .iter()
            .find(|c| c.name == "mixed-greedy")
            .expect("mixed-greedy");
        let lengths: std::collections::BTreeSet<usize> =
            greedy.token_ids.iter().map(Vec::len).collect();
        assert!(lengths.len() >= 2, "{model}: lengths {lengths:?}");
        assert!(
            greedy
                .token_ids
                .iter()
                .any(|t| t.last() == Some(&reference.eos_token_id)),
            "{model}: no caption ends on EOS"
        );
        assert!(greedy.images.len() >= 6, "{model}: mixed batch too small");
    }
}

/// The function's preprocessing (PNG decode, bilinear resize, rescale, normalise) against the
/// exporter's own `ViTImageProcessor` (Pillow) on the committed images: within one 8-bit level
/// after normalisation with std 0.5, i.e. 2/255; images already at the model size exactly.
#[test]
fn preprocessing_matches_the_exporters_image_processor() {
    let reference = reference(TINY);
    let captioner = load(&fixtures().join(TINY), "merged", &Default::default());
    let size = captioner.preprocessor().width;
    assert!(reference.images.len() >= 6);
    for (name, img) in &reference.images {
        let path = repo_root().join(&img.path);
        let rgb = image::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        let ours = captioner
            .preprocessor()
            .pixel_values(&[&rgb])
            .expect("preprocess");
        let theirs = batch(&reference.images, std::slice::from_ref(name));
        assert_eq!(ours.shape(), theirs.shape(), "{name}");
        let max = ours
            .iter()
            .zip(theirs.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let bound = if rgb.width() == size && rgb.height() == size {
            1e-6
        } else {
            2.0 / 255.0 + 1e-6
        };
        assert!(max <= bound, "{name}: max |d| {max} > {bound}");
    }
}
