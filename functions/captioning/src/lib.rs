//! Captioning: encoder-decoder generation over SQS.
