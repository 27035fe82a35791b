//! Captioning: encoder-decoder generation over SQS.

pub mod model;
