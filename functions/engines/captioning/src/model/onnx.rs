//! The optimum export's ONNX graphs behind [`StepModel`]: the encoder, and the decoder in either
//! layout, with or without the KV cache.
//!
//! Interface (checked against optimum's exporter, see `functions/engines/captioning/MODEL.md`):
//! the decoder takes `input_ids` `[rows, seq]` and `encoder_hidden_states`, no encoder attention
//! mask, and returns `logits` plus `present.{i}.key/value` `[rows, heads, seq, head_dim]`, the GPT2
//! self-attention cache only; the with-past graph (or the merged graph's cache branch) takes them
//! back as `past_key_values.{i}.key/value` with one new token per step. The merged graph also
//! takes `use_cache_branch` `[1]`; on the first step it gets `false` and zero past tensors of
//! length 1 that the no-cache branch ignores, as optimum's `prepare_inputs_for_merged` does.
//!
//! A merged decoder rewritten by `tools/hoist_cross_attention.py` also takes `hoisted.{n}`: the
//! cross-attention keys and values (and whatever else depends only on the encoder states), which
//! GPT-2 would otherwise recompute from all encoder states at every step. They come from
//! `decoder_cross_model.onnx` (input `encoder_hidden_states`, outputs `hoisted.{n}`), run once per
//! batch; the tool checked that every such output has the batch as its first axis and rows that
//! depend only on the matching encoder row, so rows are selected here instead of recomputed.

use std::borrow::Cow;

use coldpath_models::SessionPool;
use ndarray::{Array2, Array3, Array4, ArrayD, Axis, Ix3, IxDyn};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};

use super::CaptionError;
use super::config::{DECODER_CROSS_FILE, DECODER_MERGED_FILE};
use super::search::StepModel;

const PAST_PREFIX: &str = "past_key_values.";
const PRESENT_PREFIX: &str = "present.";
const HOISTED_PREFIX: &str = "hoisted.";
const ENCODER_STATES: &str = "encoder_hidden_states";

/// The decoder graphs of a model directory.
pub(crate) enum DecoderSessions {
    Merged(SessionPool),
    Split {
        decoder: SessionPool,
        with_past: Option<SessionPool>,
    },
}

/// All sessions of one captioning model, plus what their signatures say.
pub(crate) struct Sessions {
    pub encoder: SessionPool,
    pub decoder: DecoderSessions,
    /// `past_key_values.*` input names, in graph order.
    past_names: Vec<String>,
    /// Self-attention heads and head size, for the merged graph's dummy first-step past.
    heads: usize,
    head_dim: usize,
    /// Newer optimum exports give the merged decoder a `cache_position` input.
    cache_position: bool,
    /// The cross graph of a hoisted merged decoder, and its `hoisted.*` outputs in graph order.
    cross: Option<SessionPool>,
    hoisted_names: Vec<String>,
    /// Whether the decoder still reads `encoder_hidden_states` (a hoisted one may not).
    decoder_takes_states: bool,
}

fn tensor_dims(session: &Session, name: &str) -> Option<Vec<i64>> {
    let input = session.inputs().iter().find(|i| i.name() == name)?;
    match input.dtype() {
        ValueType::Tensor { shape, .. } => Some(shape.to_vec()),
        _ => None,
    }
}

/// Inputs this runner knows how to feed; a graph asking for anything else (a decoder attention
/// mask, position ids) is refused at load rather than failing on the first caption.
fn known_input(name: &str) -> bool {
    matches!(
        name,
        "pixel_values"
            | "input_ids"
            | "encoder_hidden_states"
            | "use_cache_branch"
            | "cache_position"
    ) || name.starts_with(PAST_PREFIX)
        || name.starts_with(HOISTED_PREFIX)
}

fn require_inputs(s: &Session, file: &str, needed: &[&str]) -> Result<(), CaptionError> {
    if let Some(unknown) = s.inputs().iter().find(|i| !known_input(i.name())) {
        return Err(CaptionError::bad_model(
            file,
            format!(
                "the graph takes input {} that an optimum ViT-GPT2-style export does not have",
                unknown.name()
            ),
        ));
    }
    for name in needed {
        if !s.inputs().iter().any(|i| i.name() == *name) {
            return Err(CaptionError::bad_model(
                file,
                format!("the graph has no input {name}"),
            ));
        }
    }
    Ok(())
}

/// Every decoder graph must give `logits`; checked at load so that a wrong graph is a
/// `ModelLoad` error at init instead of a failure on the first caption.
fn require_logits(s: &Session, file: &str) -> Result<(), CaptionError> {
    if s.outputs().iter().any(|o| o.name() == "logits") {
        return Ok(());
    }
    let found: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
    Err(CaptionError::bad_model(
        file,
        format!(
            "the graph has no output logits (outputs: {})",
            found.join(", ")
        ),
    ))
}

/// A cached decoder's past inputs (graph order), heads, head size, and whether it takes
/// `cache_position`.
fn cache_signature(
    s: &Session,
    file: &str,
) -> Result<(Vec<String>, usize, usize, bool), CaptionError> {
    require_inputs(s, file, &["input_ids"])?;
    let past_names: Vec<String> = s
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .filter(|n| n.starts_with(PAST_PREFIX))
        .collect();
    let Some(first) = past_names.first() else {
        return Err(CaptionError::bad_model(
            file,
            "the graph has no past_key_values inputs",
        ));
    };
    for past in &past_names {
        let present = past.replacen(PAST_PREFIX, PRESENT_PREFIX, 1);
        if !s.outputs().iter().any(|o| o.name() == present) {
            return Err(CaptionError::bad_model(
                file,
                format!("input {past} has no matching output {present}"),
            ));
        }
    }
    // optimum declares heads and head size as fixed dimensions: [batch, heads, seq, head_dim].
    let (heads, head_dim) = match tensor_dims(s, first).as_deref() {
        Some([_, h, _, d]) if *h > 0 && *d > 0 => (*h as usize, *d as usize),
        other => {
            return Err(CaptionError::bad_model(
                file,
                format!(
                    "{first} must be [batch, heads, seq, head_dim] with fixed heads and head_dim, found {other:?}"
                ),
            ));
        }
    };
    let cache_position = s.inputs().iter().any(|i| i.name() == "cache_position");
    Ok((past_names, heads, head_dim, cache_position))
}

fn hoisted_inputs(s: &Session) -> Vec<String> {
    s.inputs()
        .iter()
        .map(|i| i.name().to_string())
        .filter(|n| n.starts_with(HOISTED_PREFIX))
        .collect()
}

/// A decoder's `hoisted.*` inputs and the cross graph's outputs must be the same set, and the
/// cross graph must take only the encoder states: checked at load, so a decoder packaged without
/// its cross graph (or with another model's) is a `ModelLoad` error at init, not a failure on the
/// first caption. Returns the cross graph's outputs in graph order.
fn hoisted_signature(
    decoder: &Session,
    decoder_file: &str,
    cross: Option<&Session>,
) -> Result<Vec<String>, CaptionError> {
    let wanted = hoisted_inputs(decoder);
    let Some(cross) = cross else {
        return match wanted.first() {
            None => Ok(Vec::new()),
            Some(first) => Err(CaptionError::bad_model(
                decoder_file,
                format!(
                    "the graph takes {first} ({} hoisted inputs) but the model directory has no \
                     {DECODER_CROSS_FILE} to compute them",
                    wanted.len()
                ),
            )),
        };
    };
    let file = DECODER_CROSS_FILE;
    let inputs: Vec<&str> = cross.inputs().iter().map(|i| i.name()).collect();
    if inputs != [ENCODER_STATES] {
        return Err(CaptionError::bad_model(
            file,
            format!(
                "the graph must take only {ENCODER_STATES}, found inputs: {}",
                inputs.join(", ")
            ),
        ));
    }
    let mut given = Vec::new();
    for output in cross.outputs() {
        let name = output.name();
        if !name.starts_with(HOISTED_PREFIX) {
            return Err(CaptionError::bad_model(
                file,
                format!("output {name} is not named {HOISTED_PREFIX}<n>"),
            ));
        }
        if !matches!(
            output.dtype(),
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                ..
            }
        ) {
            return Err(CaptionError::bad_model(
                file,
                format!("output {name} must be a float32 tensor"),
            ));
        }
        if !wanted.iter().any(|w| w == name) {
            return Err(CaptionError::bad_model(
                file,
                format!("output {name} is not an input of {decoder_file}"),
            ));
        }
        given.push(name.to_string());
    }
    if let Some(missing) = wanted.iter().find(|w| !given.contains(w)) {
        return Err(CaptionError::bad_model(
            file,
            format!("the graph has no output {missing}, which {decoder_file} takes"),
        ));
    }
    Ok(given)
}

impl Sessions {
    /// Checks the graphs' signatures and reads the cache layout from them. `cross` is
    /// `decoder_cross_model.onnx`, for a merged decoder with `hoisted.*` inputs.
    pub fn new(
        encoder: Session,
        decoder: DecoderSessions,
        cross: Option<Session>,
    ) -> Result<Sessions, CaptionError> {
        require_inputs(&encoder, "encoder_model.onnx", &["pixel_values"])?;
        if !encoder
            .outputs()
            .iter()
            .any(|o| o.name() == "last_hidden_state")
        {
            return Err(CaptionError::bad_model(
                "encoder_model.onnx",
                "the graph has no output last_hidden_state",
            ));
        }
        let mut hoisted_names = Vec::new();
        let mut decoder_takes_states = true;
        let cache = match &decoder {
            DecoderSessions::Merged(pool) => {
                let file = DECODER_MERGED_FILE;
                pool.with(|s| require_inputs(s, file, &["use_cache_branch"]))?;
                pool.with(|s| require_logits(s, file))?;
                hoisted_names = pool.with(|s| hoisted_signature(s, file, cross.as_ref()))?;
                decoder_takes_states =
                    pool.with(|s| s.inputs().iter().any(|i| i.name() == ENCODER_STATES));
                if hoisted_names.is_empty() && !decoder_takes_states {
                    return Err(CaptionError::bad_model(
                        file,
                        format!("the graph has no input {ENCODER_STATES}"),
                    ));
                }
                Some(pool.with(|s| cache_signature(s, file))?)
            }
            DecoderSessions::Split { decoder, with_past } => {
                decoder.with(|s| {
                    require_inputs(
                        s,
                        "decoder_model.onnx",
                        &["input_ids", "encoder_hidden_states"],
                    )?;
                    require_logits(s, "decoder_model.onnx")?;
                    // Only the merged layout is hoisted; a split graph asking for it is refused.
                    hoisted_signature(s, "decoder_model.onnx", None)
                })?;
                match with_past {
                    Some(pool) => {
                        let file = "decoder_with_past_model.onnx";
                        pool.with(|s| {
                            require_inputs(s, file, &[ENCODER_STATES])?;
                            require_logits(s, file)?;
                            hoisted_signature(s, file, None)
                        })?;
                        Some(pool.with(|s| cache_signature(s, file))?)
                    }
                    None => None,
                }
            }
        };
        let (past_names, heads, head_dim, cache_position) = cache.unwrap_or_default();
        let encoder = SessionPool::new(vec![encoder])
            .ok_or_else(|| CaptionError::bad_model("encoder_model.onnx", "no session"))?;
        // A cross graph next to a decoder that takes nothing from it would run for nothing.
        let cross = if hoisted_names.is_empty() {
            None
        } else {
            cross.and_then(|s| SessionPool::new(vec![s]))
        };
        Ok(Sessions {
            encoder,
            decoder,
            past_names,
            heads,
            head_dim,
            cache_position,
            cross,
            hoisted_names,
            decoder_takes_states,
        })
    }

    /// Runs the cross graph: the `hoisted.*` tensors for `states`, in `hoisted_names` order,
    /// each with one row per encoder row.
    fn hoist(
        &self,
        cross: &SessionPool,
        states: &Array3<f32>,
    ) -> Result<Vec<ArrayD<f32>>, CaptionError> {
        let rows = states.len_of(Axis(0));
        let input = TensorRef::from_array_view(states).map_err(CaptionError::inference)?;
        cross.with(|s| {
            let outputs = s
                .run(ort::inputs![ENCODER_STATES => input])
                .map_err(CaptionError::inference)?;
            let mut values = Vec::with_capacity(self.hoisted_names.len());
            for name in &self.hoisted_names {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| CaptionError::inference(format!("no output {name}")))?
                    .try_extract_array::<f32>()
                    .map_err(CaptionError::inference)?;
                // Rows are selected along the first axis later; that must be the batch.
                if value.ndim() == 0 || value.len_of(Axis(0)) != rows {
                    return Err(CaptionError::inference(format!(
                        "{name} has shape {:?}, not one row per encoder row ({rows})",
                        value.shape()
                    )));
                }
                values.push(value.to_owned());
            }
            Ok(values)
        })
    }

    /// Whether decoding with the KV cache is possible (merged graph, or the with-past graph).
    pub fn has_cache(&self) -> bool {
        !matches!(
            self.decoder,
            DecoderSessions::Split {
                with_past: None,
                ..
            }
        )
    }

    /// Runs the encoder: `last_hidden_state` `[batch, seq, hidden]`.
    pub fn encode(&self, pixel_values: &Array4<f32>) -> Result<Array3<f32>, CaptionError> {
        let input = TensorRef::from_array_view(pixel_values).map_err(CaptionError::inference)?;
        self.encoder.with(|s| {
            let outputs = s
                .run(ort::inputs!["pixel_values" => input])
                .map_err(CaptionError::inference)?;
            outputs
                .get("last_hidden_state")
                .ok_or_else(|| {
                    CaptionError::inference("the encoder returned no last_hidden_state")
                })?
                .try_extract_array::<f32>()
                .map_err(CaptionError::inference)?
                .into_dimensionality::<Ix3>()
                .map(|a| a.to_owned())
                .map_err(|e| CaptionError::inference(format!("last_hidden_state: {e}")))
        })
    }
}

/// The cross graph's outputs during one run, one row per decoder row. Rows of the same image
/// have the same hoisted rows, so the graph runs once per image and rows are gathered when the
/// rows' images change (an image finished, beams seeded); a beam reorder within the same images
/// needs nothing.
struct Hoisted {
    /// Which image (row of the run's first encoder states) each row of `values` belongs to.
    images: Vec<usize>,
    /// In `hoisted_names` order.
    values: Vec<ArrayD<f32>>,
}

/// One batch being decoded: the encoder states and the cache of the rows still running.
pub(crate) struct Run<'a> {
    sessions: &'a Sessions,
    use_cache: bool,
    encoder_states: Array3<f32>,
    /// Which image (row of the first `encoder_states`) each current row decodes.
    images: Vec<usize>,
    /// Present tensors of the last step, in `past_names` order; `None` before the first step.
    past: Option<Vec<ArrayD<f32>>>,
    /// With a hoisted decoder, the cross graph's outputs; `None` before the first step.
    hoisted: Option<Hoisted>,
    /// How often the cross graph ran (once per batch, unless rows came from nowhere).
    cross_runs: usize,
}

impl<'a> Run<'a> {
    pub fn new(sessions: &'a Sessions, encoder_states: Array3<f32>, use_cache: bool) -> Self {
        let images = (0..encoder_states.len_of(Axis(0))).collect();
        Run {
            sessions,
            use_cache,
            encoder_states,
            images,
            past: None,
            hoisted: None,
            cross_runs: 0,
        }
    }

    /// Brings the hoisted tensors in line with the current rows: runs the cross graph for each
    /// distinct image the first time (and again only if an image appears that was never
    /// computed, which the searches never do), then gathers rows whenever the rows' images change.
    fn refresh_hoisted(&mut self, cross: &SessionPool) -> Result<(), CaptionError> {
        let computed = self
            .hoisted
            .as_ref()
            .is_some_and(|h| self.images.iter().all(|i| h.images.contains(i)));
        if !computed {
            // One row per distinct image, at the first current row that decodes it.
            let mut images = Vec::new();
            let mut first_rows = Vec::new();
            for (row, &image) in self.images.iter().enumerate() {
                if !images.contains(&image) {
                    images.push(image);
                    first_rows.push(row);
                }
            }
            let states = self.encoder_states.select(Axis(0), &first_rows);
            let values = self.sessions.hoist(cross, &states)?;
            self.cross_runs += 1;
            self.hoisted = Some(Hoisted { images, values });
        }
        let Some(h) = self.hoisted.as_mut() else {
            return Err(CaptionError::inference("hoisted tensors missing"));
        };
        if h.images != self.images {
            let pick = self
                .images
                .iter()
                .map(|i| {
                    h.images.iter().position(|b| b == i).ok_or_else(|| {
                        CaptionError::inference(format!("no hoisted row for image {i}"))
                    })
                })
                .collect::<Result<Vec<usize>, _>>()?;
            h.values = h.values.iter().map(|v| v.select(Axis(0), &pick)).collect();
            h.images.clone_from(&self.images);
        }
        Ok(())
    }
}

type Inputs<'v> = Vec<(Cow<'static, str>, SessionInputValue<'v>)>;

impl StepModel for Run<'_> {
    fn next_logits(&mut self, prefixes: &[Vec<u32>]) -> Result<Array2<f32>, CaptionError> {
        let rows = prefixes.len();
        let len = prefixes.first().map_or(0, Vec::len);
        if rows != self.encoder_states.len_of(Axis(0)) || prefixes.iter().any(|p| p.len() != len) {
            return Err(CaptionError::inference(
                "rows out of step with the decoder state",
            ));
        }
        let cached = self.use_cache && self.past.is_some();
        // With a cache only the newest token goes in; otherwise the whole prefix.
        let ids: Vec<i64> = if cached {
            prefixes.iter().map(|p| i64::from(p[len - 1])).collect()
        } else {
            prefixes.iter().flatten().map(|&t| i64::from(t)).collect()
        };
        let seq = if cached { 1 } else { len };
        let input_ids = Tensor::from_array(([rows, seq], ids)).map_err(CaptionError::inference)?;
        let s = self.sessions;
        if let Some(cross) = &s.cross {
            self.refresh_hoisted(cross)?;
        }
        let mut inputs: Inputs<'_> = vec![("input_ids".into(), input_ids.into())];
        if s.decoder_takes_states {
            let states = TensorRef::from_array_view(&self.encoder_states)
                .map_err(CaptionError::inference)?;
            inputs.push((ENCODER_STATES.into(), states.into()));
        }
        let (pool, feed_past) = match &s.decoder {
            DecoderSessions::Merged(pool) => {
                // Both branches take the hoisted tensors; they replace the recomputation.
                if let Some(h) = &self.hoisted {
                    for (name, value) in s.hoisted_names.iter().zip(&h.values) {
                        let t =
                            TensorRef::from_array_view(value).map_err(CaptionError::inference)?;
                        inputs.push((name.clone().into(), t.into()));
                    }
                }
                let flag = Tensor::from_array(([1usize], vec![cached]))
                    .map_err(CaptionError::inference)?;
                inputs.push(("use_cache_branch".into(), flag.into()));
                if s.cache_position {
                    let past_len = if cached { len - 1 } else { 0 };
                    let positions: Vec<i64> =
                        (past_len..past_len + seq).map(|p| p as i64).collect();
                    let t =
                        Tensor::from_array(([seq], positions)).map_err(CaptionError::inference)?;
                    inputs.push(("cache_position".into(), t.into()));
                }
                (pool, true)
            }
            DecoderSessions::Split { decoder, with_past } => match (cached, with_past) {
                (true, Some(with_past)) => (with_past, true),
                _ => (decoder, false),
            },
        };
        if feed_past {
            match (&self.past, cached) {
                (Some(past), true) => {
                    for (name, value) in s.past_names.iter().zip(past) {
                        let t =
                            TensorRef::from_array_view(value).map_err(CaptionError::inference)?;
                        inputs.push((name.clone().into(), t.into()));
                    }
                }
                _ => {
                    // The merged graph's no-cache branch ignores these; they only need valid shapes.
                    let dummy = ArrayD::<f32>::zeros(IxDyn(&[rows, s.heads, 1, s.head_dim]));
                    for name in &s.past_names {
                        let t =
                            Tensor::from_array(dummy.clone()).map_err(CaptionError::inference)?;
                        inputs.push((name.clone().into(), t.into()));
                    }
                }
            }
        }
        let keep_present = self.use_cache;
        let (logits, present) = pool.with(|session| {
            let outputs = session.run(inputs).map_err(CaptionError::inference)?;
            let logits = outputs
                .get("logits")
                .ok_or_else(|| CaptionError::inference("the decoder returned no logits"))?
                .try_extract_array::<f32>()
                .map_err(CaptionError::inference)?
                .into_dimensionality::<Ix3>()
                .map_err(|e| CaptionError::inference(format!("logits: {e}")))?;
            let last = logits.len_of(Axis(1)).checked_sub(1).ok_or_else(|| {
                CaptionError::inference("decoder returned logits for no position")
            })?;
            let logits = logits.index_axis(Axis(1), last).to_owned();
            let present = if keep_present {
                let mut present = Vec::with_capacity(s.past_names.len());
                for name in &s.past_names {
                    let out = name.replacen(PAST_PREFIX, PRESENT_PREFIX, 1);
                    let value = outputs
                        .get(&out)
                        .ok_or_else(|| CaptionError::inference(format!("no output {out}")))?
                        .try_extract_array::<f32>()
                        .map_err(CaptionError::inference)?
                        .to_owned();
                    present.push(value);
                }
                Some(present)
            } else {
                None
            };
            Ok::<_, CaptionError>((logits, present))
        })?;
        if present.is_some() {
            self.past = present;
        }
        Ok(logits)
    }

    fn keep_rows(&mut self, rows: &[usize]) -> Result<(), CaptionError> {
        let n = self.encoder_states.len_of(Axis(0));
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(CaptionError::inference(format!(
                "row {bad} selected from {n} rows"
            )));
        }
        self.encoder_states = self.encoder_states.select(Axis(0), rows);
        self.images = rows.iter().map(|&r| self.images[r]).collect();
        if let Some(past) = &mut self.past {
            for value in past.iter_mut() {
                *value = value.select(Axis(0), rows);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! On the generated tiny model (`tests/fixtures/captioning/gen_tiny_model.py`): 2 layers,
    //! 2 heads of 16, vocabulary 65. Needs the ONNX Runtime library (`ORT_DYLIB_PATH`).

    use super::*;
    use crate::model::config::{
        DECODER_FILE, DECODER_WITH_PAST_FILE, ENCODER_FILE, TINY_MODEL_DIR,
    };
    use coldpath_core::ProcessEnv;
    use coldpath_models::{OrtRuntime, SessionConfig, Threads};
    use ndarray::Array4;
    use std::path::Path;

    const START: u32 = 64;

    fn sessions(merged: bool) -> Sessions {
        let dir = Path::new(TINY_MODEL_DIR);
        let one_thread = one_thread_sessions();
        let build = |f: &str| one_thread(&dir.join(f));
        let pool = |f: &str| SessionPool::new(vec![build(f)]).unwrap();
        let decoder = if merged {
            DecoderSessions::Merged(pool(DECODER_MERGED_FILE))
        } else {
            DecoderSessions::Split {
                decoder: pool(DECODER_FILE),
                with_past: Some(pool(DECODER_WITH_PAST_FILE)),
            }
        };
        Sessions::new(build(ENCODER_FILE), decoder, None).unwrap()
    }

    fn two_images() -> Array4<f32> {
        let mut px = Array4::<f32>::zeros((2, 3, 32, 32));
        px.index_axis_mut(Axis(0), 1).fill(0.5);
        px
    }

    fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn signature_is_read_from_the_graph() {
        for merged in [true, false] {
            let s = sessions(merged);
            assert_eq!(
                s.past_names,
                [
                    "past_key_values.0.key",
                    "past_key_values.0.value",
                    "past_key_values.1.key",
                    "past_key_values.1.value"
                ]
            );
            assert_eq!((s.heads, s.head_dim), (2, 16));
            assert!(!s.cache_position);
            assert!(s.has_cache());
        }
    }

    #[test]
    fn cache_grows_one_step_at_a_time_and_follows_row_selection() {
        for merged in [true, false] {
            let s = sessions(merged);
            let states = s.encode(&two_images()).unwrap();
            assert_eq!(states.shape(), &[2, 16, 32]);
            let mut cached = Run::new(&s, states.clone(), true);
            let mut plain = Run::new(&s, states, false);
            let mut prefixes = vec![vec![START], vec![START]];
            for step in 1..=3 {
                let a = cached.next_logits(&prefixes).unwrap();
                let b = plain.next_logits(&prefixes).unwrap();
                assert_eq!(a.shape(), &[prefixes.len(), 65]);
                // Same computation, different kernels shapes: agree to float rounding.
                assert!(max_diff(&a, &b) < 1e-4, "step {step}: {}", max_diff(&a, &b));
                let past = cached.past.as_ref().unwrap();
                assert_eq!(past.len(), 4);
                for p in past {
                    assert_eq!(p.shape(), &[prefixes.len(), 2, step, 16], "merged={merged}");
                }
                assert!(plain.past.is_none());
                for (r, p) in prefixes.iter_mut().enumerate() {
                    p.push(r as u32 + 1);
                }
                if step == 2 {
                    // Row 1 seeds two beams, row 0 one.
                    let rows = [1, 1, 0];
                    cached.keep_rows(&rows).unwrap();
                    plain.keep_rows(&rows).unwrap();
                    prefixes = rows.iter().map(|&r| prefixes[r].clone()).collect();
                    assert_eq!(cached.past.as_ref().unwrap()[0].shape(), &[3, 2, 2, 16]);
                    assert_eq!(cached.encoder_states.shape(), &[3, 16, 32]);
                }
            }
        }
    }

    #[test]
    fn inputs_outside_the_export_interface_are_refused() {
        for ok in [
            "input_ids",
            "past_key_values.3.value",
            "use_cache_branch",
            "cache_position",
        ] {
            assert!(known_input(ok), "{ok}");
        }
        for unknown in ["attention_mask", "decoder_attention_mask", "position_ids"] {
            assert!(!known_input(unknown), "{unknown}");
        }
    }

    /// Builds one-thread sessions from ONNX files (the library from `ORT_DYLIB_PATH`).
    fn one_thread_sessions() -> impl Fn(&Path) -> Session {
        let runtime = OrtRuntime::load(&OrtRuntime::library_from_env(&ProcessEnv))
            .unwrap_or_else(|e| panic!("{e}"));
        let config = SessionConfig {
            intra_threads: Threads::Fixed(1),
            ..SessionConfig::default()
        };
        move |path: &Path| runtime.build_session("t", path, &config).unwrap().0
    }

    /// Regression: a decoder without `logits` loaded fine and then panicked on the
    /// first step (`outputs["logits"]`). Graph from `gen_broken_models.py`.
    #[test]
    fn a_decoder_without_logits_is_refused_at_load() {
        let build = one_thread_sessions();
        let broken = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../tests/fixtures/captioning/broken/decoder_no_logits.onnx");
        let encoder = Path::new(TINY_MODEL_DIR).join(ENCODER_FILE);
        let decoder = DecoderSessions::Split {
            decoder: SessionPool::new(vec![build(&broken)]).unwrap(),
            with_past: None,
        };
        match Sessions::new(build(&encoder), decoder, None) {
            Err(CaptionError::BadModel { file, reason }) => {
                assert_eq!(file, "decoder_model.onnx");
                assert!(reason.contains("no output logits"), "{reason}");
                assert!(reason.contains("hidden_states"), "{reason}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a decoder without logits was accepted"),
        }
    }

    fn fixture(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../tests/fixtures/captioning")
            .join(path)
    }

    /// The optimum export's merged decoder in `dir`, with `cross` as its cross graph.
    fn optimum_sessions(dir: &str, cross: Option<&str>) -> Result<Sessions, CaptionError> {
        let build = one_thread_sessions();
        let dir = fixture(dir);
        let decoder = SessionPool::new(vec![build(&dir.join(DECODER_MERGED_FILE))]).unwrap();
        Sessions::new(
            build(&dir.join(ENCODER_FILE)),
            DecoderSessions::Merged(decoder),
            cross.map(|c| build(&fixture(c))),
        )
    }

    /// `optimum-vit-gpt2-tiny-hoisted` (from `gen_hoisted_fixtures.py`) against the decoder it was
    /// made from, through a row drop, a beam-style repeat and reorder: same logits, and the cross
    /// graph runs once per image.
    #[test]
    fn hoisted_decoder_gives_the_original_logits_through_row_changes() {
        let original = optimum_sessions("optimum-vit-gpt2-tiny", None).unwrap();
        let hoisted = optimum_sessions(
            "optimum-vit-gpt2-tiny-hoisted",
            Some("optimum-vit-gpt2-tiny-hoisted/decoder_cross_model.onnx"),
        )
        .unwrap();
        assert!(original.cross.is_none() && original.hoisted_names.is_empty());
        assert!(hoisted.cross.is_some() && !hoisted.hoisted_names.is_empty());
        // 32 × 32: the fixture's preprocessor_config.json.
        let mut px = Array4::<f32>::zeros((3, 3, 32, 32));
        for (i, mut image) in px.axis_iter_mut(Axis(0)).enumerate() {
            image.fill(0.4 * i as f32 - 0.5);
        }
        let states = original.encode(&px).unwrap();
        for use_cache in [true, false] {
            let mut a = Run::new(&original, states.clone(), use_cache);
            let mut b = Run::new(&hoisted, states.clone(), use_cache);
            let mut prefixes = vec![vec![1u32]; 3];
            for step in 1..=5 {
                let la = a.next_logits(&prefixes).unwrap();
                let lb = b.next_logits(&prefixes).unwrap();
                assert!(
                    max_diff(&la, &lb) < 1e-5,
                    "step {step}: {}",
                    max_diff(&la, &lb)
                );
                for (r, p) in prefixes.iter_mut().enumerate() {
                    p.push(r as u32 + 2);
                }
                let rows: &[usize] = match step {
                    1 => &[2, 0],       // image 1 finished; rows reordered
                    2 => &[1, 1, 0, 0], // two beams each
                    3 => &[1, 0, 3, 2], // beams swap: same images, no new gather
                    4 => &[3],
                    _ => &[],
                };
                if !rows.is_empty() {
                    a.keep_rows(rows).unwrap();
                    b.keep_rows(rows).unwrap();
                    prefixes = rows.iter().map(|&r| prefixes[r].clone()).collect();
                }
            }
            assert_eq!((a.cross_runs, b.cross_runs), (0, 1));
            let h = b.hoisted.as_ref().unwrap();
            assert_eq!(h.images, [2]);
            assert!(h.values.iter().all(|v| v.len_of(Axis(0)) == 1));
        }
    }

    /// A hoisted decoder cannot run without the graph that computes its `hoisted.*` inputs, nor
    /// with one that computes only some of them, nor can a cross graph pair with a decoder that
    /// takes none: each is a `BadModel` at load naming the file and the tensor.
    #[test]
    fn hoisted_decoder_and_cross_graph_must_match_at_load() {
        let hoisted = "optimum-vit-gpt2-tiny-hoisted";
        let cross = "optimum-vit-gpt2-tiny-hoisted/decoder_cross_model.onnx";
        let cases = [
            (
                hoisted,
                None,
                DECODER_MERGED_FILE,
                "no decoder_cross_model.onnx",
            ),
            (
                hoisted,
                Some("broken/decoder_cross_missing_output.onnx"),
                DECODER_CROSS_FILE,
                "has no output hoisted.",
            ),
            (
                "optimum-vit-gpt2-tiny",
                Some(cross),
                DECODER_CROSS_FILE,
                "is not an input of decoder_model_merged.onnx",
            ),
        ];
        for (dir, cross, want_file, want) in cases {
            match optimum_sessions(dir, cross) {
                Err(CaptionError::BadModel { file, reason }) => {
                    assert_eq!(file, want_file, "{dir} {cross:?}: {reason}");
                    assert!(reason.contains(want), "{dir} {cross:?}: {reason}");
                    assert!(reason.contains("hoisted."), "{reason}");
                }
                Err(e) => panic!("{dir} {cross:?}: wrong error: {e}"),
                Ok(_) => panic!("{dir} {cross:?}: accepted"),
            }
        }
    }

    #[test]
    fn out_of_step_rows_are_errors_not_panics() {
        let s = sessions(true);
        let mut run = Run::new(&s, s.encode(&two_images()).unwrap(), true);
        assert!(matches!(
            run.keep_rows(&[2]),
            Err(CaptionError::Inference(_))
        ));
        assert!(matches!(
            run.next_logits(&[vec![START]]),
            Err(CaptionError::Inference(_))
        ));
        assert!(matches!(
            run.next_logits(&[vec![START], vec![START, 1]]),
            Err(CaptionError::Inference(_))
        ));
    }
}
