//! coldpath's cross-crate integration tests, one binary (see `coldpath_tests` for helpers).

mod embeddings;
mod events;
mod s3_models;
