//! The embeddings tokenizer on arbitrary text: the project's real `tokenizer.json`
//! (all-MiniLM-L6-v2, from `make setup`), loaded by `tokenizer::load_tokenizer` (what
//! `OnnxEmbedder::load_tokenizer` calls) with the function's default truncation (256 tokens) and
//! no padding, as `OnnxEmbedder::new` leaves it, and called as `OnnxEmbedder::embed` calls it
//! (`encode_fast` with special tokens). The engine is built without its `onnx` feature, so the
//! target links no ONNX Runtime.
//!
//! `COLDPATH_FUZZ_TOKENIZER` names another tokenizer.json; the default is the setup location,
//! `.cache/models/all-minilm-l6-v2/tokenizer.json` at the repository root.
//!
//! Invariants checked: nothing panics; every text encodes (a tokenizer error would fail the
//! caller's request); the encoding holds 2 to 256 tokens, starts with `[CLS]` and ends with
//! `[SEP]`, every id is in the vocabulary, and the ids, attention mask and type ids agree in length.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use coldpath_embeddings::tokenizer::load_tokenizer;
use libfuzzer_sys::fuzz_target;
use tokenizers::Tokenizer;

const MAX_TOKENS: usize = 256;

struct Loaded {
    tokenizer: Tokenizer,
    vocab_size: u32,
    cls: u32,
    sep: u32,
}

static TOKENIZER: LazyLock<Loaded> = LazyLock::new(|| {
    let path = std::env::var_os("COLDPATH_FUZZ_TOKENIZER").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/all-minilm-l6-v2/tokenizer.json")
        },
        PathBuf::from,
    );
    let mut tokenizer = load_tokenizer(&path, MAX_TOKENS)
        .unwrap_or_else(|e| panic!("{e} (run `make setup`, or set COLDPATH_FUZZ_TOKENIZER)"));
    tokenizer.with_padding(None);
    let vocab_size = u32::try_from(tokenizer.get_vocab_size(true)).unwrap();
    let cls = tokenizer.token_to_id("[CLS]").expect("[CLS] in the vocabulary");
    let sep = tokenizer.token_to_id("[SEP]").expect("[SEP] in the vocabulary");
    Loaded {
        tokenizer,
        vocab_size,
        cls,
        sep,
    }
});

fuzz_target!(|data: &[u8]| {
    let t = &*TOKENIZER;
    // Request texts are JSON strings, so always valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let encoding = t
        .tokenizer
        .encode_fast(text, true)
        .unwrap_or_else(|e| panic!("tokenizer error on {text:?}: {e}"));
    let ids = encoding.get_ids();
    assert!((2..=MAX_TOKENS).contains(&ids.len()), "{} tokens", ids.len());
    assert_eq!(ids[0], t.cls);
    assert_eq!(ids[ids.len() - 1], t.sep);
    assert!(ids.iter().all(|&id| id < t.vocab_size));
    assert_eq!(encoding.get_attention_mask().len(), ids.len());
    assert_eq!(encoding.get_type_ids().len(), ids.len());
});
