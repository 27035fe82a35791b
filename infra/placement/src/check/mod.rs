//! `coldpath check`: does `infra/template.yaml` deploy each function the way its declaration
//! says? And does the GPU worker's packaging set exactly the variables the worker reads? And do
//! the always-on pod's template and images (`infra/pod/`) deploy the pod as declared?
//!
//! One module per job: reading the template and its intrinsics ([`template`]), one function
//! against its declaration ([`function`], with the SQS trigger's rules in [`sqs`]), the
//! variables a template, job or image sets ([`env`]), the GPU pool's job definitions
//! ([`batch`]) and the pod ([`pod`]). What a binary may be given is its committed contract
//! ([`crate::workspace`]). The rules about the stack as a whole rather than one function
//! (alarm topics, access-log targets, log groups) are in [`crate::stack`].

pub mod batch;
pub mod env;
pub mod eventbridge;
pub mod function;
pub mod pod;
pub mod sqs;
pub mod template;

pub use batch::check_batch_jobs;
pub use env::{
    cloudformation_env_names, dockerfile_env_names, dockerfile_final_env, function_env_names,
};
pub use function::declared_env_values;
pub use pod::check_pod;
pub use sqs::{MIN_MAX_RECEIVE_COUNT, VISIBILITY_TIMEOUT_FACTOR};
pub use template::Template;
pub(crate) use template::{get_att_target, ref_target, tag_is};

use crate::declaration::{self, Declaration};
use crate::workspace::Workspace;

/// One function's result: what was verified, or every mismatch found.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCheck {
    pub function: String,
    pub workload: String,
    pub ok: Vec<String>,
    pub mismatches: Vec<String>,
}

/// Checks every declared function against the template, then, when the declarations carry the
/// always-on pod, the pod's service template and images against the pod's declaration (one more
/// result, after the functions').
pub fn check_template(
    template: &Template,
    declarations: &[Declaration],
    workspace: &Workspace,
) -> Vec<FunctionCheck> {
    let mut results: Vec<FunctionCheck> = declarations
        .iter()
        .map(|d| function::check_function(template, d))
        .collect();
    if let Some(pod) = declaration::pod_of(declarations) {
        results.push(check_pod(
            pod,
            declarations,
            workspace.contract(&pod.crate_name),
        ));
    }
    results
}
