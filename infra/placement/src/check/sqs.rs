//! An SQS-triggered function's event source and queue: partial batch failures, the batch size,
//! a dead-letter queue after enough receives, and a visibility timeout that covers the
//! function's retries and the batching window, for every timeout the template allows.

use serde_norway::Value;

use super::FunctionCheck;
use super::template::{Template, find_in_map_by_parameter, get_att_target, ref_target};
use crate::declaration::Declaration;

/// An SQS queue's visibility timeout must be at least this many times the function's timeout
/// (AWS's guidance for Lambda event source mappings), so a message is not handed to a second
/// consumer while the first is still working on it, retries included. The event source's
/// batching window comes on top: messages gathered into a batch are already received.
pub const VISIBILITY_TIMEOUT_FACTOR: f64 = 6.0;

/// The fewest receives before SQS moves a message to its dead-letter queue (AWS's advice for a
/// Lambda consumer): a receive the poller makes while the function is throttled counts too, so
/// fewer sends healthy messages to the dead-letter queue under load.
pub const MIN_MAX_RECEIVE_COUNT: f64 = 5.0;

/// `timeout_value` is the function's `Timeout` as written (a number or a `!Ref`).
pub(super) fn check_sqs(
    template: &Template,
    declaration: &Declaration,
    events: &[&Value],
    timeout_value: Option<&Value>,
    result: &mut FunctionCheck,
) {
    let timeout = timeout_value.and_then(|v| template.number(v));
    let Some(event) = events.first() else {
        result
            .mismatches
            .push("is declared trigger = \"sqs\" but has no SQS event".to_string());
        return;
    };
    let props = event.get("Properties");
    let reports_partial = props
        .and_then(|p| p.get("FunctionResponseTypes"))
        .and_then(Value::as_sequence)
        .is_some_and(|s| {
            s.iter()
                .any(|v| v.as_str() == Some("ReportBatchItemFailures"))
        });
    if !reports_partial {
        result.mismatches.push(
            "SQS event lacks FunctionResponseTypes: [ReportBatchItemFailures], so one bad message would retry the whole batch"
                .to_string(),
        );
    }
    match props.and_then(|p| p.get("BatchSize")).and_then(|v| template.number(v)) {
        Some(n) if n <= f64::from(declaration.max_batch) => {}
        other => result.mismatches.push(format!(
            "SQS event BatchSize is {other:?}, it must be set and at most the declared max_batch = {}",
            declaration.max_batch
        )),
    }
    let Some(queue_id) = props.and_then(|p| p.get("Queue")).and_then(get_att_target) else {
        result.mismatches.push(
            "SQS event Queue is not a !GetAtt <queue>.Arn of a queue in this template".to_string(),
        );
        return;
    };
    let Some(queue) = template
        .resource(&queue_id)
        .filter(|q| q.get("Type").and_then(Value::as_str) == Some("AWS::SQS::Queue"))
    else {
        result.mismatches.push(format!(
            "SQS event Queue {queue_id} is not an AWS::SQS::Queue in this template"
        ));
        return;
    };
    let qprops = queue.get("Properties");
    let redrive = qprops.and_then(|p| p.get("RedrivePolicy"));
    let dlq = redrive.and_then(|r| r.get("deadLetterTargetArn"));
    let max_receive = redrive
        .and_then(|r| r.get("maxReceiveCount"))
        .and_then(|v| template.number(v));
    match (dlq, max_receive) {
        (Some(_), Some(n)) if n >= MIN_MAX_RECEIVE_COUNT => result.ok.push(format!("queue {queue_id} has a DLQ after {n} receives")),
        (Some(_), Some(n)) if n >= 1.0 => result.mismatches.push(format!(
            "queue {queue_id} moves a message to its dead-letter queue after maxReceiveCount {n} receives, \
             under {MIN_MAX_RECEIVE_COUNT}: receives while the function is throttled count too, so healthy messages would be dead-lettered under load"
        )),
        _ => result.mismatches.push(format!(
            "queue {queue_id} has no dead-letter queue (RedrivePolicy with deadLetterTargetArn and maxReceiveCount >= 1), \
             so a poison message would be retried until it expires"
        )),
    }
    let visibility_value = qprops.and_then(|p| p.get("VisibilityTimeout"));
    let visibility = visibility_value.and_then(|v| template.number(v));
    // No batching window is 0 s; one that cannot be resolved fails the check below.
    let batching_window = match props.and_then(|p| p.get("MaximumBatchingWindowInSeconds")) {
        None => Some(0.0),
        Some(v) => template.number(v),
    };
    match (visibility, timeout, batching_window) {
        (Some(v), Some(to), Some(window)) if v >= VISIBILITY_TIMEOUT_FACTOR * to + window => {
            result.ok.push(format!(
                "visibility timeout {v} s >= {VISIBILITY_TIMEOUT_FACTOR} x {to} s + {window} s batching window"
            ));
        }
        (v, to, window) => result.mismatches.push(format!(
            "queue {queue_id} VisibilityTimeout {v:?} s must be at least {VISIBILITY_TIMEOUT_FACTOR} x the function Timeout {to:?} s \
             plus the event source's MaximumBatchingWindowInSeconds {window:?} s"
        )),
    }
    if let (Some(visibility_value), Some(timeout_value), Some(window)) =
        (visibility_value, timeout_value, batching_window)
    {
        result.mismatches.extend(visibility_rows_problems(
            template,
            &queue_id,
            visibility_value,
            timeout_value,
            window,
        ));
    }
    if reports_partial {
        result.ok.push("reports partial batch failures".to_string());
    }
}

/// When the visibility is looked up by the same parameter the function's `Timeout` is, every
/// timeout that parameter allows must find a row, and each row must hold the visibility rule,
/// not only the row of the default: a deployment may override the timeout.
fn visibility_rows_problems(
    template: &Template,
    queue_id: &str,
    visibility_value: &Value,
    timeout_value: &Value,
    window: f64,
) -> Vec<String> {
    let Some((map_name, parameter, attribute)) = find_in_map_by_parameter(visibility_value) else {
        return Vec::new();
    };
    if ref_target(timeout_value) != Some(parameter) {
        return Vec::new();
    }
    let Some(rows) = template
        .root
        .get("Mappings")
        .and_then(|m| m.get(map_name))
        .and_then(Value::as_mapping)
    else {
        return vec![format!(
            "queue {queue_id} VisibilityTimeout looks up Mappings {map_name}, which does not exist"
        )];
    };
    let key_text = |key: &Value| match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    // The timeouts a deployment may choose: the parameter's AllowedValues, or else every row.
    let allowed: Vec<String> = match template
        .root
        .get("Parameters")
        .and_then(|p| p.get(parameter))
        .and_then(|p| p.get("AllowedValues"))
        .and_then(Value::as_sequence)
    {
        Some(values) => values.iter().filter_map(key_text).collect(),
        None => rows.keys().filter_map(key_text).collect(),
    };
    // The default's row is the one checked above, as deployed without overrides.
    let default = template.parameter_default(parameter).and_then(key_text);
    let mut problems = Vec::new();
    for timeout_text in allowed {
        if default.as_ref() == Some(&timeout_text) {
            continue;
        }
        let visibility = rows
            .get(timeout_text.as_str())
            .and_then(|row| row.get(attribute))
            .and_then(|v| template.number(v));
        let Ok(timeout) = timeout_text.parse::<f64>() else {
            problems.push(format!(
                "{parameter} allows {timeout_text:?}, which is not a number of seconds"
            ));
            continue;
        };
        match visibility {
            Some(v) if v >= VISIBILITY_TIMEOUT_FACTOR * timeout + window => {}
            Some(v) => problems.push(format!(
                "with {parameter} {timeout_text}, queue {queue_id} VisibilityTimeout is {v} s (Mappings {map_name}), \
                 under {VISIBILITY_TIMEOUT_FACTOR} x {timeout_text} s + the {window} s batching window"
            )),
            None => problems.push(format!(
                "{parameter} allows {timeout_text}, but Mappings {map_name} has no {attribute} for it: that deployment would fail"
            )),
        }
    }
    problems
}
