//! The two ONNX towers: what their graphs must look like, which exporter made them, and running
//! them in batches.
//!
//! Immich's exporter has had two generations, told apart by the graph's output name alone:
//!
//! | generation | output | batch axis | what made it |
//! |---|---|---|---|
//! | earlier | `image_embedding` / `text_embedding` | symbolic (`batch_size`) | `torch.jit.trace` then `torch.onnx.export`, opset 17, `dynamic_axes` on the input |
//! | current | `embedding` | fixed at 1 | `torch.onnx.export` of the model itself, opset 19 by default, no `dynamic_axes` |
//!
//! In both the inputs are `image` (float32 `[B, 3, S, S]`, already mean/std-normalised: the
//! normalisation is never inside the graph) and `text` (int32 `[B, context]`), and the output is
//! `encode_image` / `encode_text` with `normalize=True`: L2-normalised. How many rows one run takes
//! is read from the input's declared batch dimension, not inferred from the generation: a fixed
//! batch of 1 runs texts and photos one at a time.

use std::path::{Path, PathBuf};

use coldpath_models::SessionPool;
use ndarray::{Array2, Array4, Axis, Ix2};
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use crate::error::ClipError;

/// Which tower a graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerKind {
    Visual,
    Textual,
}

impl TowerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TowerKind::Visual => "visual",
            TowerKind::Textual => "textual",
        }
    }

    fn input(self) -> &'static str {
        match self {
            TowerKind::Visual => "image",
            TowerKind::Textual => "text",
        }
    }

    fn earlier_output(self) -> &'static str {
        match self {
            TowerKind::Visual => "image_embedding",
            TowerKind::Textual => "text_embedding",
        }
    }
}

/// Which generation of Immich's exporter made a tower (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExporterGeneration {
    Earlier,
    Current,
}

impl ExporterGeneration {
    pub fn as_str(self) -> &'static str {
        match self {
            ExporterGeneration::Earlier => "earlier",
            ExporterGeneration::Current => "current",
        }
    }
}

/// A graph's one input or output, as the signature check sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    /// `None` for a non-tensor value.
    pub element: Option<TensorElementType>,
    /// Declared dimensions; negative where symbolic.
    pub shape: Vec<i64>,
}

impl Port {
    fn of(name: &str, dtype: &ValueType) -> Port {
        match dtype {
            ValueType::Tensor { ty, shape, .. } => Port {
                name: name.to_string(),
                element: Some(*ty),
                shape: shape.to_vec(),
            },
            _ => Port {
                name: name.to_string(),
                element: None,
                shape: Vec::new(),
            },
        }
    }
}

/// What the engine needs to know about a tower's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerSignature {
    pub kind: TowerKind,
    pub generation: ExporterGeneration,
    pub input: String,
    pub output: String,
    /// Rows one run may take: `Some(n)` where the graph fixes the batch, `None` where it is symbolic.
    pub fixed_batch: Option<usize>,
    /// The text tower's id type (int32 in Immich's exports; int64 accepted).
    pub ids_int64: bool,
    /// The embedding width when the graph declares it.
    pub dims: Option<usize>,
}

/// Checks a tower's graph and tells its generation. `expected` is the side of the image
/// (visual) or the context length (textual) the model's config gives.
pub fn signature(
    kind: TowerKind,
    inputs: &[Port],
    outputs: &[Port],
    expected: usize,
) -> Result<TowerSignature, String> {
    let [input] = inputs else {
        return Err(format!(
            "expected one input named {}, found {}",
            kind.input(),
            names(inputs)
        ));
    };
    if input.name != kind.input() {
        return Err(format!(
            "expected the input to be named {}, found {}",
            kind.input(),
            input.name
        ));
    }
    let [output] = outputs else {
        return Err(format!(
            "expected one output (embedding or {}), found {}",
            kind.earlier_output(),
            names(outputs)
        ));
    };
    let generation = if output.name == "embedding" {
        ExporterGeneration::Current
    } else if output.name == kind.earlier_output() {
        ExporterGeneration::Earlier
    } else {
        return Err(format!(
            "expected the output to be named embedding (current exporter) or {} (earlier exporter), found {}",
            kind.earlier_output(),
            output.name
        ));
    };
    if output.element != Some(TensorElementType::Float32) {
        return Err(format!(
            "expected a float32 output, found {:?}",
            output.element
        ));
    }
    let ids_int64 = match (kind, input.element) {
        (TowerKind::Visual, Some(TensorElementType::Float32)) => false,
        (TowerKind::Textual, Some(TensorElementType::Int32)) => false,
        (TowerKind::Textual, Some(TensorElementType::Int64)) => true,
        (_, found) => {
            let want = match kind {
                TowerKind::Visual => "float32",
                TowerKind::Textual => "int32 or int64",
            };
            return Err(format!("expected a {want} input, found {found:?}"));
        }
    };
    let fixed = |d: i64| usize::try_from(d).ok().filter(|&d| d > 0);
    let rank = match kind {
        TowerKind::Visual => 4,
        TowerKind::Textual => 2,
    };
    if input.shape.len() != rank {
        return Err(format!(
            "expected a rank-{rank} input, found shape {:?}",
            input.shape
        ));
    }
    let size_dims: &[usize] = match kind {
        TowerKind::Visual => &[2, 3],
        TowerKind::Textual => &[1],
    };
    for &axis in size_dims {
        if let Some(d) = fixed(input.shape[axis])
            && d != expected
        {
            return Err(format!(
                "expected input dimension {axis} to be {expected} (from the model's config), found {d}"
            ));
        }
    }
    if kind == TowerKind::Visual && fixed(input.shape[1]).is_some_and(|c| c != 3) {
        return Err(format!(
            "expected 3 channels, found shape {:?}",
            input.shape
        ));
    }
    Ok(TowerSignature {
        kind,
        generation,
        input: input.name.clone(),
        output: output.name.clone(),
        fixed_batch: fixed(input.shape[0]),
        ids_int64,
        dims: output.shape.last().copied().and_then(fixed),
    })
}

fn names(ports: &[Port]) -> String {
    if ports.is_empty() {
        return "none".to_string();
    }
    ports
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One tower's sessions and signature.
pub struct Tower {
    sessions: SessionPool,
    signature: TowerSignature,
    path: PathBuf,
    /// Most rows one run takes where the graph allows any.
    max_batch: usize,
}

impl Tower {
    /// Checks the sessions' graph (all from one file) against the tower's rules.
    pub fn new(
        kind: TowerKind,
        sessions: SessionPool,
        path: &Path,
        expected: usize,
        max_batch: usize,
    ) -> Result<Self, ClipError> {
        let (inputs, outputs) = sessions.with(|s: &mut Session| {
            (
                s.inputs()
                    .iter()
                    .map(|i| Port::of(i.name(), i.dtype()))
                    .collect::<Vec<_>>(),
                s.outputs()
                    .iter()
                    .map(|o| Port::of(o.name(), o.dtype()))
                    .collect::<Vec<_>>(),
            )
        });
        let signature = signature(kind, &inputs, &outputs, expected).map_err(|reason| {
            ClipError::ModelSignature {
                tower: kind.as_str(),
                path: path.to_path_buf(),
                reason,
            }
        })?;
        Ok(Tower {
            sessions,
            signature,
            path: path.to_path_buf(),
            max_batch: max_batch.max(1),
        })
    }

    pub fn signature(&self) -> &TowerSignature {
        &self.signature
    }

    /// Rows per run: the graph's fixed batch, or the configured maximum.
    pub fn rows_per_run(&self) -> usize {
        self.signature.fixed_batch.unwrap_or(self.max_batch)
    }

    /// Runs the visual tower on a `[N, 3, S, S]` batch of at most [`Tower::rows_per_run`] rows.
    pub fn run_images(&self, batch: Array4<f32>) -> Result<Vec<Vec<f32>>, ClipError> {
        let rows = batch.len_of(Axis(0));
        let tensor = Tensor::from_array(batch).map_err(|e| ClipError::Inference(e.to_string()))?;
        self.run(tensor.into(), rows)
    }

    /// Runs the text tower on `[N, context]` ids of at most [`Tower::rows_per_run`] rows.
    pub fn run_ids(&self, ids: Array2<u32>) -> Result<Vec<Vec<f32>>, ClipError> {
        let rows = ids.len_of(Axis(0));
        let err = |e: ort::Error| ClipError::Inference(e.to_string());
        let value: ort::value::DynValue = if self.signature.ids_int64 {
            Tensor::from_array(ids.mapv(i64::from)).map_err(err)?.into()
        } else {
            // Ids come from a vocabulary of far fewer than 2^31 entries.
            Tensor::from_array(ids.mapv(|i| i as i32))
                .map_err(err)?
                .into()
        };
        self.run(value, rows)
    }

    fn run(&self, input: ort::value::DynValue, rows: usize) -> Result<Vec<Vec<f32>>, ClipError> {
        let name = self.signature.input.as_str();
        self.sessions.with(|session| {
            let outputs = session
                .run(ort::inputs![name => input])
                .map_err(|e| ClipError::Inference(e.to_string()))?;
            let out = outputs
                .get(self.signature.output.as_str())
                .ok_or_else(|| {
                    ClipError::Inference(format!(
                        "the {} tower returned no output {}",
                        self.signature.kind.as_str(),
                        self.signature.output
                    ))
                })?
                .try_extract_array::<f32>()
                .map_err(|e| ClipError::Inference(e.to_string()))?
                .into_dimensionality::<Ix2>()
                .map_err(|e| {
                    ClipError::Inference(format!(
                        "{}: expected a [batch, dim] output: {e}",
                        self.path.display()
                    ))
                })?;
            if out.nrows() != rows {
                return Err(ClipError::Inference(format!(
                    "the {} tower gave {} vectors for {rows} inputs",
                    self.signature.kind.as_str(),
                    out.nrows()
                )));
            }
            Ok(out
                .rows()
                .into_iter()
                .map(|r| {
                    let mut v = r.to_vec();
                    l2_normalize(&mut v);
                    v
                })
                .collect())
        })
    }
}

/// Scales `v` to unit length. Immich's towers already return unit vectors; doing it again costs
/// nothing and keeps a graph exported without `normalize=True` usable for cosine search.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, ty: TensorElementType, shape: &[i64]) -> Port {
        Port {
            name: name.into(),
            element: Some(ty),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn current_exporter_is_told_by_the_output_name() {
        let s = signature(
            TowerKind::Visual,
            &[port("image", TensorElementType::Float32, &[1, 3, 224, 224])],
            &[port("embedding", TensorElementType::Float32, &[1, 512])],
            224,
        )
        .unwrap();
        assert_eq!(s.generation, ExporterGeneration::Current);
        assert_eq!(s.fixed_batch, Some(1));
        assert_eq!(s.dims, Some(512));
    }

    #[test]
    fn earlier_exporter_is_told_by_the_output_name() {
        let s = signature(
            TowerKind::Textual,
            &[port("text", TensorElementType::Int32, &[-1, 77])],
            &[port(
                "text_embedding",
                TensorElementType::Float32,
                &[-1, 512],
            )],
            77,
        )
        .unwrap();
        assert_eq!(s.generation, ExporterGeneration::Earlier);
        assert_eq!(s.fixed_batch, None);
        assert!(!s.ids_int64);
        // The visual output name on the text tower is refused: each tower has its own name.
        let err = signature(
            TowerKind::Textual,
            &[port("text", TensorElementType::Int32, &[-1, 77])],
            &[port(
                "image_embedding",
                TensorElementType::Float32,
                &[-1, 512],
            )],
            77,
        )
        .unwrap_err();
        assert!(err.contains("found image_embedding"), "{err}");
    }

    #[test]
    fn graphs_that_do_not_fit_are_refused_with_what_was_found() {
        let f32_ = TensorElementType::Float32;
        let cases: Vec<(TowerKind, Vec<Port>, Vec<Port>, &str)> = vec![
            (
                TowerKind::Visual,
                vec![port("pixel_values", f32_, &[1, 3, 224, 224])],
                vec![port("embedding", f32_, &[1, 8])],
                "found pixel_values",
            ),
            (
                TowerKind::Visual,
                vec![port("image", f32_, &[1, 3, 256, 256])],
                vec![port("embedding", f32_, &[1, 8])],
                "found 256",
            ),
            (
                TowerKind::Visual,
                vec![port("image", TensorElementType::Uint8, &[1, 3, 224, 224])],
                vec![port("embedding", f32_, &[1, 8])],
                "expected a float32 input",
            ),
            (
                TowerKind::Textual,
                vec![port("text", TensorElementType::Int32, &[1, 64])],
                vec![port("embedding", f32_, &[1, 8])],
                "found 64",
            ),
            (
                TowerKind::Textual,
                vec![port("text", TensorElementType::Int32, &[1, 77])],
                vec![port("last_hidden_state", f32_, &[1, 77, 8])],
                "found last_hidden_state",
            ),
            (
                TowerKind::Textual,
                vec![
                    port("input_ids", TensorElementType::Int64, &[1, 77]),
                    port("attention_mask", TensorElementType::Int64, &[1, 77]),
                ],
                vec![port("embedding", f32_, &[1, 8])],
                "found input_ids, attention_mask",
            ),
        ];
        for (kind, inputs, outputs, found) in cases {
            let err = signature(
                kind,
                &inputs,
                &outputs,
                if kind == TowerKind::Visual { 224 } else { 77 },
            )
            .unwrap_err();
            assert!(err.contains(found), "{err} should contain {found}");
        }
    }

    #[test]
    fn normalizing_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 3];
        l2_normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 3]);
    }
}
