//! Text to the fixed-length token ids the text tower takes, as open_clip's tokenizers make them.
//!
//! open_clip cleans the text first (`tokenizer_kwargs.clean`), then tokenizes with the special
//! tokens, truncates to the context length keeping the end token last, and pads to the context
//! length. Truncation and the special tokens come from `tokenizer.json` (HF `tokenizers`, with
//! truncation at the context length: the post-processor's tokens are counted, so the end token
//! survives, as open_clip's `tokens[-1] = eot` and transformers' `truncation=True` both do).
//!
//! Not reproduced: `ftfy.fix_text` (mojibake repair) and the double `html.unescape` of open_clip's
//! `basic_clean`. Typed search queries do not contain either; a query that does differs from
//! open_clip's ids there.

use std::path::Path;
use std::str::FromStr;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::ClipError;

/// open_clip's text cleaning (`tokenizer.get_clean_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clean {
    /// Whitespace runs to one space, trimmed, lower-cased (`SimpleTokenizer`'s default).
    Lower,
    /// Whitespace runs to one space, trimmed (`HFTokenizer`'s default).
    Whitespace,
    /// `_` to space, ASCII punctuation removed, lower-cased, whitespace collapsed (big_vision's
    /// `canonicalize_text`; SigLIP).
    Canonicalize,
}

impl FromStr for Clean {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "lower" => Ok(Clean::Lower),
            "whitespace" => Ok(Clean::Whitespace),
            "canonicalize" => Ok(Clean::Canonicalize),
            _ => Err(()),
        }
    }
}

impl Clean {
    pub fn apply(self, text: &str) -> String {
        let collapse = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match self {
            Clean::Lower => collapse(text).to_lowercase(),
            Clean::Whitespace => collapse(text),
            Clean::Canonicalize => {
                let kept: String = text
                    .chars()
                    .map(|c| if c == '_' { ' ' } else { c })
                    .filter(|c| !c.is_ascii_punctuation())
                    .collect();
                collapse(&kept.to_lowercase())
            }
        }
    }
}

/// The model's text rules, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRules {
    pub context_length: usize,
    pub clean: Clean,
}

/// A tokenizer that gives exactly `context_length` ids per text.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    rules: TextRules,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`. `pad_token` is the pad token's text for open_clip's `HFTokenizer`
    /// rules, or `None` for its `SimpleTokenizer` rules (pad id 0).
    pub fn load(path: &Path, rules: TextRules, pad_token: Option<&str>) -> Result<Self, ClipError> {
        let err = |reason: String| ClipError::TokenizerLoad {
            path: path.to_path_buf(),
            reason,
        };
        let tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        Self::new(tokenizer, rules, pad_token).map_err(|e| match e {
            ClipError::TokenizerLoad { reason, .. } => err(reason),
            other => other,
        })
    }

    pub fn new(
        mut tokenizer: Tokenizer,
        rules: TextRules,
        pad_token: Option<&str>,
    ) -> Result<Self, ClipError> {
        let err = |reason: String| ClipError::TokenizerLoad {
            path: "tokenizer.json".into(),
            reason,
        };
        let pad_id = match pad_token {
            None => 0,
            Some(t) => tokenizer
                .token_to_id(t)
                .ok_or_else(|| err(format!("the pad token {t:?} is not in the vocabulary")))?,
        };
        // The exporter's own padding and truncation (if any) are replaced by the model's rules.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: rules.context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(ClipTokenizer {
            tokenizer,
            rules,
            pad_id,
        })
    }

    pub fn context_length(&self) -> usize {
        self.rules.context_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `context_length` ids for `text`: cleaned, with the special tokens, truncated, padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.encode_counted(text).map(|(ids, _)| ids)
    }

    /// [`ClipTokenizer::encode`], and how many of the ids are the text's (special tokens
    /// included, padding left out): what a response's `usage` counts.
    pub fn encode_counted(&self, text: &str) -> Result<(Vec<u32>, usize), String> {
        let cleaned = self.rules.clean.apply(text);
        let encoding = self
            .tokenizer
            .encode(cleaned, true)
            .map_err(|e| e.to_string())?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > self.rules.context_length {
            return Err(format!(
                "the tokenizer gave {} ids after truncation to {}",
                ids.len(),
                self.rules.context_length
            ));
        }
        let count = ids.len();
        ids.resize(self.rules.context_length, self.pad_id);
        Ok((ids, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_matches_open_clip() {
        // Expected strings are what open_clip's _clean_lower / _clean_whitespace /
        // _clean_canonicalize return for these inputs.
        let text = "  A Dog,\trunning on the BEACH_at sunset!  ";
        assert_eq!(
            Clean::Lower.apply(text),
            "a dog, running on the beach_at sunset!"
        );
        assert_eq!(
            Clean::Whitespace.apply(text),
            "A Dog, running on the BEACH_at sunset!"
        );
        assert_eq!(
            Clean::Canonicalize.apply(text),
            "a dog running on the beach at sunset"
        );
        assert_eq!(
            Clean::Canonicalize.apply("café — 2019 (1/2)"),
            "café — 2019 12"
        );
        assert_eq!(Clean::Lower.apply(""), "");
    }

    #[test]
    fn clean_names() {
        assert_eq!("canonicalize".parse(), Ok(Clean::Canonicalize));
        assert_eq!("lower".parse(), Ok(Clean::Lower));
        assert_eq!("whitespace".parse(), Ok(Clean::Whitespace));
        assert_eq!("ftfy".parse::<Clean>(), Err(()));
    }
}
