//! `coldpath-aws` against moto's S3 and SQS on 127.0.0.1 (started and stopped by each test, from
//! the setup's virtualenv: run with `make test`, or after `eval "$(make -s env)"`), one binary.

mod fetch;
mod queue;
mod sinks;
