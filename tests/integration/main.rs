//! coldpath's cross-crate integration tests, one binary (see `coldpath_tests` for helpers).

mod captioning;
mod captioning_sqs;
mod embeddings;
mod events;
mod faces;
mod image_input;
mod placement;
mod queue;
mod s3_models;
mod sinks;
