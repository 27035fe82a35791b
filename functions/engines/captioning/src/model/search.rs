//! Greedy and beam search over any step-wise decoder, with per-image stopping.
//!
//! The semantics are those of transformers' `generate()` for an encoder-decoder model
//! (`GenerationMixin._greedy_search` / `_beam_search` with `BeamSearchScorer` and
//! `BeamHypotheses` in `transformers/generation/beam_search.py`), so a caption matches what the
//! Python model would produce; `tests/fixtures/captioning/reference_decode.py` re-implements the
//! same rules independently and the parity tests compare token ids exactly.
//!
//! transformers keeps finished rows in the batch and feeds them pad tokens; here they leave the
//! work instead ([`StepModel::keep_rows`]), which gives the same tokens for the rows that remain
//! (each row's decoder computation depends only on that row) and saves their compute.

use ndarray::{Array2, ArrayView1};

use super::CaptionError;
use super::config::EarlyStopping;

/// A decoder that can be stepped: one call gives next-token logits for every live row.
pub(crate) trait StepModel {
    /// Next-token logits `[rows, vocab]`. `prefixes[r]` is row r's tokens so far, decoder start
    /// token first; all rows have the same length (they advance together).
    fn next_logits(&mut self, prefixes: &[Vec<u32>]) -> Result<Array2<f32>, CaptionError>;
    /// Keeps the given rows of the current state, in this order (repeats allowed: a row can seed
    /// several beams). Called between steps whenever rows finish or beams are reordered.
    fn keep_rows(&mut self, rows: &[usize]) -> Result<(), CaptionError>;
}

/// The special tokens that drive a search.
#[derive(Debug, Clone)]
pub(crate) struct Special {
    pub start: u32,
    pub eos: Vec<u32>,
}

impl Special {
    fn is_eos(&self, token: u32) -> bool {
        self.eos.contains(&token)
    }
}

fn argmax(row: ArrayView1<'_, f32>) -> u32 {
    // First maximum wins on ties, as torch.argmax / numpy.argmax do.
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy search: each image's tokens up to and including the first EOS, or `limits[i]` tokens.
pub(crate) fn greedy(
    model: &mut impl StepModel,
    special: &Special,
    limits: &[usize],
) -> Result<Vec<Vec<u32>>, CaptionError> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); limits.len()];
    // Live rows: which image each decoder row belongs to.
    let mut live: Vec<usize> = (0..limits.len()).collect();
    let mut prefixes: Vec<Vec<u32>> = vec![vec![special.start]; limits.len()];
    prune(model, &mut live, &mut prefixes, |i| limits[i] == 0)?;
    while !live.is_empty() {
        let logits = model.next_logits(&prefixes)?;
        check_rows(&logits, live.len())?;
        for (r, &image) in live.iter().enumerate() {
            let token = argmax(logits.row(r));
            out[image].push(token);
            prefixes[r].push(token);
        }
        prune(model, &mut live, &mut prefixes, |i| {
            out[i].last().is_some_and(|&t| special.is_eos(t)) || out[i].len() >= limits[i]
        })?;
    }
    Ok(out)
}

/// Drops the rows whose image is finished, telling the model which rows stay.
fn prune(
    model: &mut impl StepModel,
    live: &mut Vec<usize>,
    prefixes: &mut Vec<Vec<u32>>,
    finished: impl Fn(usize) -> bool,
) -> Result<(), CaptionError> {
    let keep: Vec<usize> = (0..live.len()).filter(|&r| !finished(live[r])).collect();
    if keep.len() == live.len() {
        return Ok(());
    }
    *live = keep.iter().map(|&r| live[r]).collect();
    *prefixes = keep
        .iter()
        .map(|&r| std::mem::take(&mut prefixes[r]))
        .collect();
    if !live.is_empty() {
        model.keep_rows(&keep)?;
    }
    Ok(())
}

fn check_rows(logits: &Array2<f32>, rows: usize) -> Result<(), CaptionError> {
    if logits.nrows() != rows || logits.ncols() == 0 {
        return Err(CaptionError::inference(format!(
            "decoder returned logits of shape {:?} for {rows} rows",
            logits.shape()
        )));
    }
    Ok(())
}

/// Beam search settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BeamSettings {
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
}

/// The best finished sequences of one image (transformers' `BeamHypotheses`).
#[derive(Debug, Default)]
pub(crate) struct Hypotheses {
    /// (score, tokens after the start token, EOS included when it ended on one).
    pub items: Vec<(f64, Vec<u32>)>,
}

impl Hypotheses {
    fn worst(&self) -> f64 {
        self.items.iter().map(|h| h.0).fold(f64::INFINITY, f64::min)
    }

    /// Adds a finished sequence; `generated_len` counts the tokens after the start token.
    pub fn add(
        &mut self,
        tokens: Vec<u32>,
        sum_logprobs: f64,
        generated_len: usize,
        settings: &BeamSettings,
    ) {
        let score = sum_logprobs / (generated_len as f64).powf(settings.length_penalty);
        if self.items.len() < settings.num_beams || score > self.worst() {
            self.items.push((score, tokens));
            if self.items.len() > settings.num_beams {
                let worst = self
                    .items
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                self.items.remove(worst);
            }
        }
    }

    /// transformers' `BeamHypotheses.is_done`: `best_sum_logprobs` is the best candidate score
    /// of this step, `generated_len` the length a running beam has after this step, `max_len` the
    /// image's token limit.
    pub fn is_done(
        &self,
        best_sum_logprobs: f64,
        generated_len: usize,
        max_len: usize,
        settings: &BeamSettings,
    ) -> bool {
        if self.items.len() < settings.num_beams {
            return false;
        }
        let len = match settings.early_stopping {
            EarlyStopping::True => return true,
            EarlyStopping::False => generated_len,
            // With a positive length penalty the best reachable score is at the longest length.
            EarlyStopping::Never if settings.length_penalty > 0.0 => max_len,
            EarlyStopping::Never => generated_len,
        };
        let highest_attainable = best_sum_logprobs / (len as f64).powf(settings.length_penalty);
        self.worst() >= highest_attainable
    }

    /// The best sequence; on equal scores the one added last, as transformers' sort picks it.
    fn best(self) -> Vec<u32> {
        let mut best: Option<(f64, Vec<u32>)> = None;
        for item in self.items {
            if best.as_ref().is_none_or(|b| item.0 >= b.0) {
                best = Some(item);
            }
        }
        best.map(|b| b.1).unwrap_or_default()
    }
}

fn log_softmax(row: ArrayView1<'_, f32>) -> Vec<f64> {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let log_sum = sum.ln();
    row.iter().map(|&v| f64::from(v) - max - log_sum).collect()
}

/// One image's running beams.
struct BeamState {
    image: usize,
    /// Per beam: tokens after the start token, and the summed log-probability.
    beams: Vec<(Vec<u32>, f64)>,
    hyps: Hypotheses,
}

/// Beam search: per image, the best hypothesis's tokens (EOS included when it ended on one).
pub(crate) fn beam_search(
    model: &mut impl StepModel,
    special: &Special,
    settings: &BeamSettings,
    limits: &[usize],
) -> Result<Vec<Vec<u32>>, CaptionError> {
    let nb = settings.num_beams;
    let mut results: Vec<Option<Vec<u32>>> = vec![None; limits.len()];
    // Only the first beam may expand on the first step: the others start at -1e9.
    let mut states: Vec<BeamState> = Vec::new();
    let mut rows = Vec::new();
    for (image, &limit) in limits.iter().enumerate() {
        if limit == 0 {
            results[image] = Some(Vec::new());
            continue;
        }
        let beams = (0..nb)
            .map(|b| (Vec::new(), if b == 0 { 0.0 } else { -1e9 }))
            .collect();
        states.push(BeamState {
            image,
            beams,
            hyps: Hypotheses::default(),
        });
        rows.extend(std::iter::repeat_n(image, nb));
    }
    if states.is_empty() {
        return Ok(results.into_iter().map(Option::unwrap_or_default).collect());
    }
    model.keep_rows(&rows)?;
    // transformers keeps max(2, 1 + number of EOS tokens) * num_beams candidates per step.
    let n_candidates = (special.eos.len() + 1).max(2) * nb;

    while !states.is_empty() {
        let prefixes: Vec<Vec<u32>> = states
            .iter()
            .flat_map(|s| s.beams.iter())
            .map(|(t, _)| {
                std::iter::once(special.start)
                    .chain(t.iter().copied())
                    .collect()
            })
            .collect();
        let logits = model.next_logits(&prefixes)?;
        check_rows(&logits, states.len() * nb)?;
        let vocab = logits.ncols();
        let mut keep_rows = Vec::new();
        let mut next_states = Vec::new();
        for (s_idx, mut state) in states.into_iter().enumerate() {
            // Candidate scores over beams × vocabulary.
            let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(nb * vocab);
            for (b, (_, score)) in state.beams.iter().enumerate() {
                let logp = log_softmax(logits.row(s_idx * nb + b));
                cand.extend(
                    logp.iter()
                        .enumerate()
                        .map(|(t, &lp)| (lp + score, b, t as u32)),
                );
            }
            // torch.topk on the flattened scores: descending, lower flat index first on ties. A
            // total order, so selecting the first n_candidates before sorting only them gives the
            // same candidates as a full sort (which costs a GPT-2 vocabulary × beams every step).
            let order = |x: &(f64, usize, u32), y: &(f64, usize, u32)| {
                y.0.total_cmp(&x.0)
                    .then((x.1 * vocab + x.2 as usize).cmp(&(y.1 * vocab + y.2 as usize)))
            };
            if n_candidates < cand.len() {
                cand.select_nth_unstable_by(n_candidates - 1, order);
                cand.truncate(n_candidates);
            }
            cand.sort_by(order);
            let generated = state.beams[0].0.len();
            let limit = limits[state.image];
            if generated + 1 >= limit {
                // The token limit: transformers' beam search (the rewrite in 4.50+ that
                // `_update_finished_beams` implements) finishes every one of the first num_beams
                // candidates at once, EOS or not, and keeps the best num_beams of them and the
                // earlier hypotheses. The older `BeamSearchScorer` first added the EOS candidates,
                // and when they filled the hypotheses (early_stopping true) never compared the
                // running beams, which could score higher (pinned by
                // `the_limit_step_weighs_eos_and_running_candidates_together`).
                for &(score, beam, token) in cand.iter().take(nb) {
                    let mut tokens = state.beams[beam].0.clone();
                    tokens.push(token);
                    state.hyps.add(tokens, score, generated + 1, settings);
                }
                results[state.image] = Some(std::mem::take(&mut state.hyps).best());
                continue;
            }
            let mut next: Vec<(Vec<u32>, f64, usize)> = Vec::with_capacity(nb);
            for (rank, &(score, beam, token)) in cand.iter().enumerate() {
                if special.is_eos(token) {
                    // An EOS outside the first num_beams candidates is not a finished beam.
                    if rank >= nb {
                        continue;
                    }
                    let mut tokens = state.beams[beam].0.clone();
                    tokens.push(token);
                    state.hyps.add(tokens, score, generated + 1, settings);
                } else {
                    let mut tokens = state.beams[beam].0.clone();
                    tokens.push(token);
                    next.push((tokens, score, beam));
                }
                if next.len() == nb {
                    break;
                }
            }
            if next.len() < nb {
                return Err(CaptionError::inference(format!(
                    "beam search found {} continuations for {nb} beams (vocabulary of {vocab})",
                    next.len()
                )));
            }
            // transformers' `_check_early_stop_heuristic` bounds what a running beam can still
            // reach from the best running beam's score, not from the best candidate's (an EOS
            // candidate's score has already been spent on a hypothesis).
            let best_running = next[0].1;
            let done = state
                .hyps
                .is_done(best_running, generated + 1, limit, settings);
            if done {
                results[state.image] = Some(std::mem::take(&mut state.hyps).best());
                continue;
            }
            keep_rows.extend(next.iter().map(|(_, _, beam)| s_idx * nb + beam));
            state.beams = next.into_iter().map(|(t, s, _)| (t, s)).collect();
            next_states.push(state);
        }
        states = next_states;
        if !states.is_empty() {
            model.keep_rows(&keep_rows)?;
        }
    }
    Ok(results.into_iter().map(Option::unwrap_or_default).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake decoder whose next-token logits are a fixed table indexed by the last token, so a
    /// test can lay out exactly which paths exist. It records row selections.
    struct Table {
        /// logits[last_token] = row of logits
        logits: Vec<Vec<f32>>,
        rows: usize,
        kept: Vec<Vec<usize>>,
        steps: usize,
    }

    impl Table {
        /// A model over `logits` for `rows` sequences, before any step.
        fn new(logits: Vec<Vec<f32>>, rows: usize) -> Self {
            Table {
                logits,
                rows,
                kept: vec![],
                steps: 0,
            }
        }
    }

    impl StepModel for Table {
        fn next_logits(&mut self, prefixes: &[Vec<u32>]) -> Result<Array2<f32>, CaptionError> {
            assert_eq!(prefixes.len(), self.rows, "rows out of sync with keep_rows");
            self.steps += 1;
            let v = self.logits[0].len();
            let mut out = Array2::zeros((prefixes.len(), v));
            for (r, p) in prefixes.iter().enumerate() {
                let last = *p.last().unwrap() as usize;
                for t in 0..v {
                    out[[r, t]] = self.logits[last][t];
                }
            }
            Ok(out)
        }
        fn keep_rows(&mut self, rows: &[usize]) -> Result<(), CaptionError> {
            assert!(rows.iter().all(|&r| r < self.rows.max(4)));
            self.rows = rows.len();
            self.kept.push(rows.to_vec());
            Ok(())
        }
    }

    const START: u32 = 0;
    const EOS: u32 = 3;

    fn special() -> Special {
        Special {
            start: START,
            eos: vec![EOS],
        }
    }

    /// Vocabulary 0..4: from START, token 1 is likeliest; from 1, 2; from 2, EOS.
    fn chain() -> Vec<Vec<f32>> {
        vec![
            vec![-9.0, 2.0, 1.0, 0.0],
            vec![-9.0, 0.0, 3.0, 1.0],
            vec![-9.0, 0.0, 0.0, 5.0],
            vec![-9.0, 0.0, 0.0, 0.0],
        ]
    }

    #[test]
    fn greedy_stops_at_eos_or_limit_and_drops_finished_rows() {
        let mut m = Table::new(chain(), 3);
        let out = greedy(&mut m, &special(), &[10, 2, 1]).unwrap();
        assert_eq!(out, vec![vec![1, 2, EOS], vec![1, 2], vec![1]]);
        // After step 1 image 2 leaves; after step 2 image 1 leaves.
        assert_eq!(m.kept, vec![vec![0, 1], vec![0]]);
        assert_eq!(m.steps, 3);
    }

    #[test]
    fn greedy_with_zero_limit_runs_nothing() {
        let mut m = Table::new(chain(), 1);
        assert_eq!(
            greedy(&mut m, &special(), &[0]).unwrap(),
            vec![Vec::<u32>::new()]
        );
        assert_eq!(m.steps, 0);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        let row = ndarray::arr1(&[1.0f32, 3.0, 3.0, 0.0]);
        assert_eq!(argmax(row.view()), 1);
    }

    fn settings(nb: usize, es: EarlyStopping) -> BeamSettings {
        BeamSettings {
            num_beams: nb,
            length_penalty: 1.0,
            early_stopping: es,
        }
    }

    #[test]
    fn hypotheses_keep_the_best_num_beams_by_length_normalised_score() {
        let s = settings(2, EarlyStopping::True);
        let mut h = Hypotheses::default();
        h.add(vec![1, EOS], -4.0, 2, &s); // -2.0
        h.add(vec![EOS], -3.0, 1, &s); // -3.0
        h.add(vec![1, 2, EOS], -3.0, 3, &s); // -1.0, evicts -3.0
        let mut scores: Vec<f64> = h.items.iter().map(|i| i.0).collect();
        scores.sort_by(f64::total_cmp);
        assert_eq!(scores, vec![-2.0, -1.0]);
        assert!(h.is_done(0.0, 3, 10, &s));
        assert_eq!(h.best(), vec![1, 2, EOS]);
    }

    #[test]
    fn is_done_without_early_stopping_compares_the_best_reachable_score() {
        let s = settings(1, EarlyStopping::False);
        let mut h = Hypotheses::default();
        assert!(!h.is_done(-1.0, 2, 10, &s), "no hypothesis yet");
        h.add(vec![EOS], -2.0, 1, &s); // score -2
        // A running beam at -3 over 2 tokens could reach -1.5 > -2: not done.
        assert!(!h.is_done(-3.0, 2, 10, &s));
        // At -5 over 2 tokens it reaches -2.5 < -2: done.
        assert!(h.is_done(-5.0, 2, 10, &s));
        // "never" measures at the maximum length: -5 / 10 = -0.5 > -2, not done.
        let never = settings(1, EarlyStopping::Never);
        assert!(!h.is_done(-5.0, 2, 10, &never));
    }

    #[test]
    fn beam_search_follows_the_most_likely_path_and_reorders_rows() {
        let mut m = Table::new(chain(), 1);
        let out =
            beam_search(&mut m, &special(), &settings(2, EarlyStopping::True), &[10]).unwrap();
        assert_eq!(out, vec![vec![1, 2, EOS]]);
        // The first call expands the one image into its two beams.
        assert_eq!(m.kept[0], vec![0, 0]);
    }

    #[test]
    fn beam_search_prefers_a_longer_sequence_with_a_better_average() {
        // From START: EOS directly (logp ~ -0.7) or 1 then EOS (each step ~ -0.05).
        let logits = vec![
            vec![-9.0, 0.0, -9.0, 0.0],
            vec![-9.0, -9.0, -9.0, 9.0],
            vec![-9.0, 0.0, 0.0, 0.0],
            vec![-9.0, 0.0, 0.0, 0.0],
        ];
        let mut m = Table::new(logits, 1);
        let out = beam_search(&mut m, &special(), &settings(2, EarlyStopping::True), &[5]).unwrap();
        assert_eq!(out, vec![vec![1, EOS]]);
    }

    #[test]
    fn beam_search_at_the_limit_returns_the_best_running_beam() {
        let mut m = Table::new(chain(), 2);
        let out = beam_search(
            &mut m,
            &special(),
            &settings(2, EarlyStopping::False),
            &[2, 1],
        )
        .unwrap();
        assert_eq!(out, vec![vec![1, 2], vec![1]]);
    }

    /// Regression (found by the transformers parity fixtures, `limit3-beam3`): at the token
    /// limit an EOS candidate filled the hypotheses (early_stopping true) and the search stopped
    /// without weighing the running beam beside it, which scores higher; transformers finishes
    /// the first num_beams candidates of the last step together and keeps the best.
    #[test]
    fn the_limit_step_weighs_eos_and_running_candidates_together() {
        let logits = vec![
            // From START: 1 first, EOS second (a one-token hypothesis), 2 third.
            vec![-9.0, 2.0, 0.0, 1.5],
            // From 1: 1 just ahead of EOS.
            vec![-9.0, 5.0, 0.0, 4.9],
            vec![-9.0, 0.0, 0.0, 0.0],
            vec![-9.0, 0.0, 0.0, 0.0],
        ];
        let mut m = Table::new(logits, 1);
        let out = beam_search(&mut m, &special(), &settings(2, EarlyStopping::True), &[2]).unwrap();
        // [1, 1] scores (-0.555 - 0.648) / 2 = -0.60, beating [1, EOS] (-0.65) and [EOS] (-1.06).
        assert_eq!(out, vec![vec![1, 1]]);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let row = ndarray::arr1(&[1.0f32, 2.0, 3.0]);
        let lp = log_softmax(row.view());
        let total: f64 = lp.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
