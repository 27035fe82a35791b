//! The EventBridge trigger: a rule whose target is the function, invoked asynchronously.
//!
//! S3 refuses two notification configurations for one event type on overlapping prefixes, so a
//! second consumer of a bucket's uploads takes them from EventBridge (the bucket's
//! `EventBridgeEnabled`). The wiring is four resources, and a deployment missing any of them
//! fails silently: the rule (an `Object Created` pattern) with the function as a target, a retry
//! policy and a dead-letter queue for what it cannot deliver; the `AWS::Lambda::Permission` that
//! lets `events.amazonaws.com` invoke the function from that rule (without it every delivery is
//! refused and, after the retries, dead-lettered); the function's own on-failure destination for
//! invocations that fail after Lambda's retries; and an alarm on each of those queues, so no
//! upload is dropped unseen.

use serde_norway::Value;

use super::FunctionCheck;
use super::template::{Template, get_att_target, ref_target};
use crate::declaration::Declaration;

/// The logical id a target, permission or destination names: `!GetAtt X.Arn`, `!Ref X`.
fn names(value: &Value) -> Option<String> {
    get_att_target(value).or_else(|| ref_target(value).map(str::to_string))
}

/// Whether the template holds a queue policy letting `events.amazonaws.com` send to `queue`.
fn queue_allows_eventbridge(template: &Template, queue: &str) -> bool {
    template
        .resources_of_type("AWS::SQS::QueuePolicy")
        .any(|(_, p)| {
            let props = p.get("Properties");
            let on_queue = props
                .and_then(|p| p.get("Queues"))
                .and_then(Value::as_sequence)
                .is_some_and(|qs| qs.iter().any(|q| names(q).as_deref() == Some(queue)));
            let statements = props
                .and_then(|p| p.get("PolicyDocument"))
                .and_then(|d| d.get("Statement"))
                .and_then(Value::as_sequence)
                .map(Vec::as_slice)
                .unwrap_or_default();
            on_queue
                && statements.iter().any(|s| {
                    s.get("Effect").and_then(Value::as_str) == Some("Allow")
                        && s.get("Principal")
                            .and_then(|p| p.get("Service"))
                            .and_then(Value::as_str)
                            == Some("events.amazonaws.com")
                        && s.get("Action").and_then(Value::as_str) == Some("sqs:SendMessage")
                })
        })
}

/// Whether an alarm of the template watches the queue `queue` (its `QueueName` dimension).
fn queue_has_alarm(template: &Template, queue: &str) -> bool {
    template
        .resources_of_type("AWS::CloudWatch::Alarm")
        .any(|(_, a)| {
            a.get("Properties")
                .and_then(|p| p.get("Dimensions"))
                .and_then(Value::as_sequence)
                .is_some_and(|ds| {
                    ds.iter().any(|d| {
                        d.get("Name").and_then(Value::as_str) == Some("QueueName")
                            && d.get("Value").and_then(get_att_target).as_deref() == Some(queue)
                    })
                })
        })
}

/// The queue named by `value`, if it is an `AWS::SQS::Queue` of the template.
fn queue_of(template: &Template, value: Option<&Value>) -> Option<String> {
    let id = names(value?)?;
    (template.resource(&id)?.get("Type").and_then(Value::as_str) == Some("AWS::SQS::Queue"))
        .then_some(id)
}

pub(super) fn check_eventbridge(
    template: &Template,
    declaration: &Declaration,
    function: &Value,
    c: &mut FunctionCheck,
) {
    let id = declaration.function.as_str();
    let before = c.mismatches.len();
    let rules: Vec<(&str, &Value)> = template
        .resources_of_type("AWS::Events::Rule")
        .filter_map(|(rule, r)| {
            let targets = r.get("Properties")?.get("Targets")?.as_sequence()?;
            let target = targets
                .iter()
                .find(|t| t.get("Arn").and_then(names).as_deref() == Some(id))?;
            Some((rule, target))
        })
        .collect();
    if rules.is_empty() {
        c.mismatches.push(format!(
            "is declared trigger = \"eventbridge\" but no AWS::Events::Rule has it as a target (Arn: !GetAtt {id}.Arn)"
        ));
    }
    let mut queues = Vec::new();
    for (rule, target) in &rules {
        let pattern = template
            .resource(rule)
            .and_then(|r| r.get("Properties"))
            .and_then(|p| p.get("EventPattern"));
        if pattern.and_then(|p| p.get("source")).is_none()
            || pattern.and_then(|p| p.get("detail-type")).is_none()
        {
            c.mismatches.push(format!(
                "{rule}: has no EventPattern with source and detail-type, so it matches no upload or every event"
            ));
        }
        let permitted = template
            .resources_of_type("AWS::Lambda::Permission")
            .any(|(_, p)| {
                let props = p.get("Properties");
                let get = |k: &str| props.and_then(|p| p.get(k));
                get("FunctionName").and_then(names).as_deref() == Some(id)
                    && get("Principal").and_then(|v| template.string(v))
                        == Some("events.amazonaws.com")
                    && get("Action").and_then(|v| template.string(v))
                        == Some("lambda:InvokeFunction")
                    && get("SourceArn").and_then(get_att_target).as_deref() == Some(*rule)
            });
        if !permitted {
            c.mismatches.push(format!(
                "{rule}: no AWS::Lambda::Permission lets events.amazonaws.com lambda:InvokeFunction {id} with SourceArn !GetAtt {rule}.Arn: every delivery would be refused"
            ));
        }
        if target.get("RetryPolicy").is_none() {
            c.mismatches.push(format!(
                "{rule}: its target {id} has no RetryPolicy (how long EventBridge keeps trying a delivery Lambda refuses)"
            ));
        }
        match queue_of(
            template,
            target.get("DeadLetterConfig").and_then(|d| d.get("Arn")),
        ) {
            Some(q) if queue_allows_eventbridge(template, &q) => queues.push(q),
            Some(q) => c.mismatches.push(format!(
                "{rule}: its dead-letter queue {q} has no queue policy letting events.amazonaws.com sqs:SendMessage"
            )),
            None => c.mismatches.push(format!(
                "{rule}: its target {id} has no DeadLetterConfig naming a queue of this template: an event EventBridge cannot deliver would be dropped"
            )),
        }
    }
    // Lambda's own retries of an asynchronous invocation that failed, then the on-failure
    // destination (SAM's DeadLetterQueue, or EventInvokeConfig's OnFailure).
    let props = function.get("Properties");
    let on_failure = props
        .and_then(|p| p.get("DeadLetterQueue"))
        .and_then(|d| d.get("TargetArn"))
        .or_else(|| {
            props
                .and_then(|p| p.get("EventInvokeConfig"))
                .and_then(|e| e.get("DestinationConfig"))
                .and_then(|d| d.get("OnFailure"))
                .and_then(|o| o.get("Destination"))
        });
    match queue_of(template, on_failure) {
        Some(q) => queues.push(q),
        None => c.mismatches.push(
            "has no on-failure destination (DeadLetterQueue or EventInvokeConfig OnFailure) naming a queue of this template: an upload that fails after Lambda's retries would be dropped"
                .to_string(),
        ),
    }
    queues.sort();
    queues.dedup();
    for q in &queues {
        if !queue_has_alarm(template, q) {
            c.mismatches.push(format!(
                "no alarm watches {q} (a CloudWatch alarm with Dimensions QueueName !GetAtt {q}.QueueName): failed uploads would pile up unseen"
            ));
        }
    }
    if !rules.is_empty() && c.mismatches.len() == before {
        c.ok.push(format!(
            "eventbridge trigger ({}: permission, retry policy, dead-letter queue; on failure and dead letters alarmed: {})",
            rules.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", "),
            queues.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::declaration::Declaration;

    /// The wiring the real template has, in miniature: rule → function, its permission, the
    /// rule's dead-letter queue with its policy, the function's own, an alarm on each.
    const WIRED: &str = r#"
Resources:
  F:
    Type: AWS::Serverless::Function
    Properties:
      DeadLetterQueue: {Type: SQS, TargetArn: !GetAtt FailedQueue.Arn}
  Rule:
    Type: AWS::Events::Rule
    Properties:
      EventPattern:
        source: [aws.s3]
        detail-type: [Object Created]
      Targets:
        - Id: f
          Arn: !GetAtt F.Arn
          RetryPolicy: {MaximumRetryAttempts: 185}
          DeadLetterConfig: {Arn: !GetAtt UndeliveredQueue.Arn}
  Permission:
    Type: AWS::Lambda::Permission
    Properties:
      Action: lambda:InvokeFunction
      FunctionName: !GetAtt F.Arn
      Principal: events.amazonaws.com
      SourceArn: !GetAtt Rule.Arn
  UndeliveredQueue:
    Type: AWS::SQS::Queue
  UndeliveredQueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref UndeliveredQueue]
      PolicyDocument:
        Statement:
          - Effect: Allow
            Principal: {Service: events.amazonaws.com}
            Action: sqs:SendMessage
  FailedQueue:
    Type: AWS::SQS::Queue
  UndeliveredAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Dimensions:
        - {Name: QueueName, Value: !GetAtt UndeliveredQueue.QueueName}
  FailedAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      Dimensions:
        - {Name: QueueName, Value: !GetAtt FailedQueue.QueueName}
"#;

    fn declaration() -> Declaration {
        let text = "[package]\nname = \"coldpath-clip-function\"\n[package.metadata.coldpath]\nworkload = \"clip-vision\"\nfunction = \"F\"\nbinary = \"clip\"\nlatency_budget_ms = 60000\ncold_start_on_perceived_path = false\npinned_warm = false\ncompute = \"cpu\"\ntrigger = \"eventbridge\"\nmax_batch = 1\nmemory_mb = 2048\ntimeout_s = 60\n";
        Declaration::from_manifest_str(text, Path::new("Cargo.toml")).unwrap()
    }

    fn run(template: &str) -> FunctionCheck {
        let t = Template::from_str(template, Path::new("t.yaml")).unwrap();
        let mut c = FunctionCheck {
            function: "F".to_string(),
            workload: "clip-vision".to_string(),
            ok: Vec::new(),
            mismatches: Vec::new(),
        };
        check_eventbridge(&t, &declaration(), t.resource("F").unwrap(), &mut c);
        c
    }

    /// The one mismatch `template` gives, which must contain `needle`.
    fn one_mismatch(template: &str, needle: &str) {
        let c = run(template);
        assert!(
            c.mismatches.len() == 1 && c.mismatches[0].contains(needle),
            "{:?}",
            c.mismatches
        );
    }

    fn without(what: &str) -> String {
        assert_eq!(WIRED.matches(what).count(), 1, "{what}");
        WIRED.replace(what, "")
    }

    #[test]
    fn the_wired_rule_passes() {
        let c = run(WIRED);
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        assert_eq!(
            c.ok,
            [
                "eventbridge trigger (Rule: permission, retry policy, dead-letter queue; on failure and dead letters alarmed: FailedQueue, UndeliveredQueue)"
            ]
        );
    }

    #[test]
    fn no_rule_targeting_the_function_is_a_mismatch() {
        let c = run(&WIRED.replace("Arn: !GetAtt F.Arn", "Arn: !GetAtt G.Arn"));
        assert!(
            c.mismatches
                .iter()
                .any(|m| m.contains("no AWS::Events::Rule has it as a target")),
            "{:?}",
            c.mismatches
        );
    }

    #[test]
    fn a_missing_or_misdirected_permission_is_a_mismatch() {
        one_mismatch(
            &WIRED.replace("      SourceArn: !GetAtt Rule.Arn\n", ""),
            "no AWS::Lambda::Permission",
        );
        one_mismatch(
            &WIRED.replace(
                "Principal: events.amazonaws.com",
                "Principal: s3.amazonaws.com",
            ),
            "no AWS::Lambda::Permission",
        );
    }

    #[test]
    fn a_rule_without_retries_or_a_dead_letter_queue_is_a_mismatch() {
        one_mismatch(
            &without("          RetryPolicy: {MaximumRetryAttempts: 185}\n"),
            "no RetryPolicy",
        );
        let c = run(&without(
            "          DeadLetterConfig: {Arn: !GetAtt UndeliveredQueue.Arn}\n",
        ));
        assert!(
            c.mismatches
                .iter()
                .any(|m| m.contains("no DeadLetterConfig")),
            "{:?}",
            c.mismatches
        );
        one_mismatch(
            &WIRED.replace(
                "Principal: {Service: events.amazonaws.com}",
                "Principal: {Service: sns.amazonaws.com}",
            ),
            "has no queue policy letting events.amazonaws.com",
        );
    }

    #[test]
    fn a_function_without_an_on_failure_queue_or_an_alarm_is_a_mismatch() {
        one_mismatch(
            &without("      DeadLetterQueue: {Type: SQS, TargetArn: !GetAtt FailedQueue.Arn}\n"),
            "has no on-failure destination",
        );
        one_mismatch(
            &WIRED.replace(
                "!GetAtt FailedQueue.QueueName",
                "!GetAtt OtherQueue.QueueName",
            ),
            "no alarm watches FailedQueue",
        );
    }
}
