//! Placement by latency budget, as data.
//!
//! Each host crate declares its latency budget and triggers in `[package.metadata.coldpath]`
//! ([`declaration`], found through `cargo metadata` with each host's committed `contract.json`,
//! the variables its binary reads: [`workspace`]); the benchmarks' figures live in `infra/placement/measurements.toml`
//! ([`measurements`]); [`plan`] applies the rule (a cold start on the perceived path, or over the
//! budget, keeps a workload warm; a backlog sends it to a bulk GPU; everything else scales to
//! zero) and prices the options from `infra/placement/prices.toml` ([`prices`]) for a traffic
//! profile ([`profile`]); [`check`] verifies that `infra/template.yaml` deploys each function the
//! way its declaration says, and [`stack`] that the stack as a whole can alert, log and keep its
//! logs (alarm topics CloudWatch can publish to, access-log targets S3 can deliver to, a
//! retained log group per function). The always-on pod (`coldpath-serve`, declared in
//! `functions/hosts/serve/Cargo.toml`) is a second home for the warm set: the plan prices it against
//! provisioned Lambda, and the check holds `infra/pod/service.yaml` and its images to it. The
//! `coldpath` binary is a thin edge over [`cli`].

pub mod check;
pub mod cli;
pub mod declaration;
pub mod error;
pub mod measurements;
pub mod plan;
pub mod prices;
pub mod profile;
pub mod stack;
pub mod workspace;

pub use check::{FunctionCheck, Template, check_template};
pub use declaration::{Compute, Declaration, PodDeclaration, Trigger};
pub use error::{DeclarationError, InputError, TemplateError};
pub use measurements::{Measurement, Measurements};
pub use plan::{Decision, Placement, Plan, PodComparison};
pub use prices::Prices;
pub use profile::Profile;
pub use workspace::{BinaryContract, Workspace};
