//! coldpath's cross-crate integration tests, one binary (helpers in `coldpath_tests`, and in
//! `coldpath_test_support` for those the function crates' own tests share).

mod architecture;
mod captioning;
mod captioning_common;
mod captioning_optimum;
mod captioning_sqs;
mod embeddings;
mod events;
mod faces;
mod image_heif_avif;
mod image_input;
mod prepared_graphs;
mod s3_models;
