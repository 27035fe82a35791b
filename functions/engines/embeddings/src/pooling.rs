//! Pooling token states into one vector per text, and normalising it.

use ndarray::{ArrayView2, ArrayView3};

/// How token states become a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (sentence-transformers `pooling_mode_mean_tokens`).
    Mean,
    /// The first token's state (`[CLS]`), for models trained that way.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            _ => Err(()),
        }
    }
}

/// Pools `hidden` (batch × seq × dim) under `mask` (batch × seq) into one row per text.
///
/// The model's output is checked against the mask it was given rather than trusted: a graph
/// that drops or adds positions or rows (a wrong export, a model swapped under the function)
/// is an error naming both shapes, never an out-of-bounds panic or a silently shifted mean.
pub fn pool(
    pooling: Pooling,
    hidden: ArrayView3<'_, f32>,
    mask: ArrayView2<'_, i64>,
) -> Result<Vec<Vec<f32>>, String> {
    let (batch, seq, dim) = hidden.dim();
    if (batch, seq) != mask.dim() || dim == 0 {
        return Err(format!(
            "the model returned token states of shape [{batch}, {seq}, {dim}] for an input of shape [{}, {}]",
            mask.nrows(),
            mask.ncols()
        ));
    }
    Ok((0..batch)
        .map(|b| match pooling {
            Pooling::Cls => hidden.slice(ndarray::s![b, 0, ..]).to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; dim];
                let mut count = 0f32;
                for (t, &m) in mask.row(b).iter().enumerate() {
                    if m == 0 {
                        continue;
                    }
                    count += 1.0;
                    for (acc, &h) in sum.iter_mut().zip(hidden.slice(ndarray::s![b, t, ..])) {
                        *acc += h;
                    }
                }
                // Same clamp as sentence-transformers, so an all-masked row gives zeros, not NaN.
                let denom = count.max(1e-9);
                sum.iter_mut().for_each(|v| *v /= denom);
                sum
            }
        })
        .collect())
}

pub use coldpath_core::vector::{cosine, l2_normalize};

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    #[test]
    fn mean_pooling_ignores_masked_tokens() {
        // Two texts, three positions, dim 2; the second text has one padding position whose
        // state is huge and must not leak into the mean.
        let hidden = Array3::from_shape_vec(
            (2, 3, 2),
            vec![1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 1e6, 1e6],
        )
        .unwrap();
        let mask = Array2::from_shape_vec((2, 3), vec![1, 1, 1, 1, 1, 0]).unwrap();
        let out = pool(Pooling::Mean, hidden.view(), mask.view()).unwrap();
        assert_eq!(out, vec![vec![3., 4.], vec![20., 30.]]);
    }

    #[test]
    fn all_masked_row_pools_to_zero() {
        let hidden = Array3::from_elem((1, 2, 3), 5f32);
        let mask = Array2::zeros((1, 2));
        assert_eq!(
            pool(Pooling::Mean, hidden.view(), mask.view()).unwrap(),
            vec![vec![0.; 3]]
        );
    }

    #[test]
    fn cls_pooling_takes_first_token() {
        let hidden = Array3::from_shape_vec((1, 2, 2), vec![7., 8., 1., 1.]).unwrap();
        let mask = Array2::ones((1, 2));
        assert_eq!(
            pool(Pooling::Cls, hidden.view(), mask.view()).unwrap(),
            vec![vec![7., 8.]]
        );
    }

    /// Regression: a model whose sequence length differed from the mask's panicked
    /// (shorter) or pooled the wrong positions (longer); fewer rows gave missing vectors.
    #[test]
    fn output_shapes_that_do_not_match_the_input_are_errors() {
        let mask = Array2::<i64>::ones((2, 3));
        for (b, s, d) in [(2, 2, 4), (2, 4, 4), (1, 3, 4), (3, 3, 4), (2, 3, 0)] {
            let hidden = Array3::<f32>::zeros((b, s, d));
            for pooling in [Pooling::Mean, Pooling::Cls] {
                let err = pool(pooling, hidden.view(), mask.view()).unwrap_err();
                assert!(err.contains(&format!("[{b}, {s}, {d}]")), "{err}");
                assert!(err.contains("[2, 3]"), "{err}");
            }
        }
    }

    #[test]
    fn normalisation_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3., 4.];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0., 0.];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0., 0.]);
        assert!((cosine(&[1., 0.], &[2., 0.]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1., 0.], &[0., 1.]).abs() < 1e-6);
    }

    #[test]
    fn parses_pooling_names() {
        assert_eq!("MEAN".parse(), Ok(Pooling::Mean));
        assert_eq!("cls".parse(), Ok(Pooling::Cls));
        assert!("max".parse::<Pooling>().is_err());
    }
}
