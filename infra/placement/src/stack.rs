//! `coldpath check`'s rules about the stack as a whole, beside the per-function ones in
//! [`crate::check`]: defects no single function's declaration would reveal, each of which
//! deploys without an error and fails later, silently.
//!
//! - An alarm whose topic CloudWatch cannot publish to (the topic encrypted with the AWS-managed
//!   `alias/aws/sns` key, or with a key whose policy does not let `cloudwatch.amazonaws.com`
//!   generate data keys and decrypt): the alarm changes state and nobody hears of it.
//! - A bucket's access-log target with no bucket policy letting `logging.s3.amazonaws.com` put
//!   objects, scoped to this account's buckets: with ACLs disabled no log is ever delivered.
//! - A function without its own log group (`/aws/lambda/<FunctionName>`) with a retention:
//!   Lambda creates one on the first log line and keeps it forever. The GPU pool's job
//!   definitions likewise ([`batch_log_group_problems`], run on `infra/gpu/batch.yaml`).
//! - A queue consumer that can be switched off with no way back that waits for nothing
//!   ([`consumer_switch_problems`], run on both templates): whatever may call
//!   `lambda:UpdateEventSourceMapping` must also run on a schedule. The way back must not hang
//!   on an event: a Batch job that never leaves RUNNABLE sends none, and an alarm that stays in
//!   ALARM never sends OK, so a consumer disabled on such an event stays disabled and the
//!   queue's messages expire unconsumed.
//!
//! The rules are a table ([`RULES`]): a name for the OK line and a function from the template
//! to its problems.

use serde_norway::Value;

use crate::check::{FunctionCheck, Template, get_att_target, ref_target, tag_is};

/// One stack rule: what it verifies (said on the OK line) and the problems it finds.
pub struct Rule {
    pub verifies: &'static str,
    pub problems: fn(&Template) -> Vec<String>,
}

/// Every stack rule, in the order their problems are reported.
pub const RULES: &[Rule] = &[
    Rule {
        verifies: "alarm topics CloudWatch can publish to",
        problems: alarm_topic_problems,
    },
    Rule {
        verifies: "access-log targets S3 can deliver to",
        problems: access_log_target_problems,
    },
    Rule {
        verifies: "a retained log group per function",
        problems: function_log_group_problems,
    },
    Rule {
        verifies: "queue consumers switched off only by something that also runs on a schedule",
        problems: consumer_switch_problems,
    },
];

/// The service principal CloudWatch alarms publish to SNS as.
const CLOUDWATCH_PRINCIPAL: &str = "cloudwatch.amazonaws.com";
/// What CloudWatch calls on the topic's key to publish an encrypted message.
const CLOUDWATCH_KEY_ACTIONS: [&str; 2] = ["kms:GenerateDataKey", "kms:Decrypt"];
/// The service principal S3 server access logging delivers as.
const LOG_DELIVERY_PRINCIPAL: &str = "logging.s3.amazonaws.com";
/// The condition keys that tie the log-delivery grant to this account's buckets.
const LOG_DELIVERY_CONDITION_KEYS: [&str; 2] = ["aws:SourceAccount", "aws:SourceArn"];
/// The alarm properties that name what an alarm notifies.
const ALARM_ACTION_PROPERTIES: [&str; 3] = ["AlarmActions", "OKActions", "InsufficientDataActions"];
/// The function resource types whose logs go to `/aws/lambda/<FunctionName>`.
const FUNCTION_TYPES: [&str; 2] = ["AWS::Serverless::Function", "AWS::Lambda::Function"];

/// Applies every rule in [`RULES`] to `template`; one result, named after the template.
pub fn check_stack(template: &Template) -> FunctionCheck {
    let mut result = FunctionCheck {
        function: template.path().display().to_string(),
        workload: "stack".to_string(),
        ok: Vec::new(),
        mismatches: Vec::new(),
    };
    for rule in RULES {
        let problems = (rule.problems)(template);
        if problems.is_empty() {
            result.ok.push(rule.verifies.to_string());
        }
        result.mismatches.extend(problems);
    }
    result
}

fn properties(resource: &Value) -> Option<&Value> {
    resource.get("Properties")
}

/// A policy document's statements (`Statement` is one statement or a list of them).
fn statements(policy: Option<&Value>) -> Vec<&Value> {
    match policy.and_then(|p| p.get("Statement")) {
        Some(Value::Sequence(list)) => list.iter().collect(),
        Some(single @ Value::Mapping(_)) => vec![single],
        _ => Vec::new(),
    }
}

/// A statement field that is one string or a list of strings.
fn strings(field: Option<&Value>) -> Vec<&str> {
    match field {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Sequence(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn principal_services(statement: &Value) -> Vec<&str> {
    strings(statement.get("Principal").and_then(|p| p.get("Service")))
}

fn is_allow(statement: &Value) -> bool {
    statement.get("Effect").and_then(Value::as_str) == Some("Allow")
}

/// Whether an IAM action pattern (`*` matches any run of characters; case-insensitive, as
/// IAM compares actions) matches the action `action`.
fn action_matches(pattern: &str, action: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let action = action.to_ascii_lowercase();
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = action.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn allows_action(statement: &Value, action: &str) -> bool {
    strings(statement.get("Action"))
        .iter()
        .any(|pattern| action_matches(pattern, action))
}

/// The condition keys a statement tests, under any operator.
fn condition_keys(statement: &Value) -> Vec<&str> {
    statement
        .get("Condition")
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|operators| operators.values())
        .filter_map(Value::as_mapping)
        .flat_map(|tests| tests.keys())
        .filter_map(Value::as_str)
        .collect()
}

/// The logical id a `!Ref X` or `!GetAtt X.Attribute` names.
fn referenced_id(value: &Value) -> Option<String> {
    ref_target(value)
        .map(str::to_string)
        .or_else(|| get_att_target(value))
}

/// Why CloudWatch cannot publish to the topic `topic_id`, or `None` when it can: an
/// unencrypted topic, or one encrypted with a key of this template whose policy grants
/// CloudWatch the key actions.
fn topic_unusable_by_cloudwatch(template: &Template, topic_id: &str) -> Option<String> {
    let key = properties(template.resource(topic_id)?)?.get("KmsMasterKeyId")?;
    // A literal key id, ARN or alias (`as_str` would also see through a `!Ref`'s tag).
    if let Value::String(literal) = key {
        return Some(if literal.contains("alias/aws/") {
            format!(
                "is encrypted with the AWS-managed key {literal}, whose policy does not let {CLOUDWATCH_PRINCIPAL} use it"
            )
        } else {
            format!(
                "is encrypted with {literal}, a key outside this template whose policy cannot be checked for {CLOUDWATCH_PRINCIPAL}"
            )
        });
    }
    let Some(mut key_id) = referenced_id(key) else {
        return Some(format!(
            "has a KmsMasterKeyId this check cannot follow: {key:?}"
        ));
    };
    // An alias of this template stands for its target key.
    let mut key_resource = template.resource(&key_id);
    if key_resource
        .and_then(|r| r.get("Type"))
        .and_then(Value::as_str)
        == Some("AWS::KMS::Alias")
    {
        match key_resource
            .and_then(properties)
            .and_then(|p| p.get("TargetKeyId"))
            .and_then(referenced_id)
        {
            Some(target) => {
                key_resource = template.resource(&target);
                key_id = target;
            }
            None => {
                return Some(format!(
                    "is encrypted through alias {key_id}, whose TargetKeyId is not a key of this template"
                ));
            }
        }
    }
    let Some(key_resource) =
        key_resource.filter(|r| r.get("Type").and_then(Value::as_str) == Some("AWS::KMS::Key"))
    else {
        return Some(format!(
            "is encrypted with {key_id}, which is not an AWS::KMS::Key of this template"
        ));
    };
    let policy = properties(key_resource).and_then(|p| p.get("KeyPolicy"));
    let granted = statements(policy).into_iter().any(|statement| {
        is_allow(statement)
            && principal_services(statement).contains(&CLOUDWATCH_PRINCIPAL)
            && CLOUDWATCH_KEY_ACTIONS
                .iter()
                .all(|action| allows_action(statement, action))
    });
    (!granted).then(|| {
        format!(
            "is encrypted with key {key_id}, whose KeyPolicy does not allow {CLOUDWATCH_PRINCIPAL} {}",
            CLOUDWATCH_KEY_ACTIONS.join(" and ")
        )
    })
}

/// Every alarm's SNS actions go to a topic CloudWatch can publish to; one problem per topic,
/// naming the alarms that notify it.
pub fn alarm_topic_problems(template: &Template) -> Vec<String> {
    let mut alarms_by_topic: Vec<(&str, Vec<&str>)> = Vec::new();
    for (alarm_id, alarm) in template.resources_of_type("AWS::CloudWatch::Alarm") {
        let actions = ALARM_ACTION_PROPERTIES.iter().flat_map(|property| {
            properties(alarm)
                .and_then(|p| p.get(*property))
                .and_then(Value::as_sequence)
                .map(Vec::as_slice)
                .unwrap_or_default()
        });
        for topic_id in actions.filter_map(ref_target) {
            let is_topic = template
                .resource(topic_id)
                .and_then(|r| r.get("Type"))
                .and_then(Value::as_str)
                == Some("AWS::SNS::Topic");
            if !is_topic {
                continue;
            }
            match alarms_by_topic.iter_mut().find(|(id, _)| *id == topic_id) {
                Some((_, alarms)) if alarms.contains(&alarm_id) => {}
                Some((_, alarms)) => alarms.push(alarm_id),
                None => alarms_by_topic.push((topic_id, vec![alarm_id])),
            }
        }
    }
    alarms_by_topic
        .into_iter()
        .filter_map(|(topic_id, alarms)| {
            let why = topic_unusable_by_cloudwatch(template, topic_id)?;
            Some(format!(
                "topic {topic_id} {why}, so CloudWatch cannot publish to it: {} alarms can never notify ({})",
                alarms.len(),
                alarms.join(", ")
            ))
        })
        .collect()
}

/// Every bucket named as another's `LoggingConfiguration.DestinationBucketName` has a bucket
/// policy that lets S3's log delivery put objects, tied to this account's buckets.
pub fn access_log_target_problems(template: &Template) -> Vec<String> {
    let mut targets: Vec<(String, &str)> = Vec::new();
    for (bucket_id, bucket) in template.resources_of_type("AWS::S3::Bucket") {
        let destination = properties(bucket)
            .and_then(|p| p.get("LoggingConfiguration"))
            .and_then(|l| l.get("DestinationBucketName"));
        let Some(destination) = destination else {
            continue;
        };
        match ref_target(destination) {
            Some(target) if template.resource(target).is_some() => {
                if !targets.iter().any(|(t, _)| t == target) {
                    targets.push((target.to_string(), bucket_id));
                }
            }
            // A bucket outside this template is its owner's to configure.
            _ => continue,
        }
    }
    let mut problems = Vec::new();
    for (target, first_source) in targets {
        let policies: Vec<&Value> = template
            .resources_of_type("AWS::S3::BucketPolicy")
            .filter(|(_, policy)| {
                properties(policy)
                    .and_then(|p| p.get("Bucket"))
                    .and_then(ref_target)
                    == Some(target.as_str())
            })
            .map(|(_, policy)| policy)
            .collect();
        let grants: Vec<&Value> = policies
            .iter()
            .flat_map(|policy| statements(properties(policy).and_then(|p| p.get("PolicyDocument"))))
            .filter(|statement| {
                is_allow(statement)
                    && principal_services(statement).contains(&LOG_DELIVERY_PRINCIPAL)
                    && allows_action(statement, "s3:PutObject")
            })
            .collect();
        if grants.is_empty() {
            problems.push(format!(
                "bucket {target} is the access-log target of {first_source} but no AWS::S3::BucketPolicy on it allows \
                 {LOG_DELIVERY_PRINCIPAL} s3:PutObject: no access log would ever be delivered"
            ));
        } else if !grants.iter().any(|statement| {
            condition_keys(statement)
                .iter()
                .any(|key| LOG_DELIVERY_CONDITION_KEYS.contains(key))
        }) {
            problems.push(format!(
                "bucket {target}'s grant to {LOG_DELIVERY_PRINCIPAL} has no {} condition: any account's bucket could log into it",
                LOG_DELIVERY_CONDITION_KEYS.join(" or ")
            ));
        }
    }
    problems
}

/// The text of a name given as a literal or a `!Sub` / `{Fn::Sub: ...}` (its template string,
/// variables unexpanded).
fn name_text(value: &Value) -> Option<String> {
    let sub_argument = match value {
        Value::String(s) => return Some(s.clone()),
        Value::Tagged(t) if tag_is(&t.tag, "Sub") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::Sub")?,
        _ => return None,
    };
    match sub_argument {
        Value::String(s) => Some(s.clone()),
        // The list form: [template string, variables].
        Value::Sequence(seq) => seq.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Every function has a log group of this template under the name Lambda writes to
/// (`/aws/lambda/<FunctionName>`, where an unnamed function's name is its `!Ref`), with a
/// `RetentionInDays`.
pub fn function_log_group_problems(template: &Template) -> Vec<String> {
    let log_groups: Vec<(&str, Option<String>, &Value)> = template
        .resources_of_type("AWS::Logs::LogGroup")
        .map(|(id, group)| {
            let name = properties(group)
                .and_then(|p| p.get("LogGroupName"))
                .and_then(name_text);
            (id, name, group)
        })
        .collect();
    let mut problems = Vec::new();
    for function_type in FUNCTION_TYPES {
        for (function_id, function) in template.resources_of_type(function_type) {
            // The names the group may be given: through the function's own name when it sets
            // one, and always through its Ref (which is its name).
            let mut wanted = vec![format!("/aws/lambda/${{{function_id}}}")];
            if let Some(name) = properties(function)
                .and_then(|p| p.get("FunctionName"))
                .and_then(name_text)
            {
                wanted.push(format!("/aws/lambda/{name}"));
            }
            let group = log_groups
                .iter()
                .find(|(_, name, _)| name.as_ref().is_some_and(|n| wanted.contains(n)));
            match group {
                None => problems.push(format!(
                    "function {function_id} has no AWS::Logs::LogGroup named {}: Lambda would create one on the first log line and keep it forever",
                    wanted.last().map(String::as_str).unwrap_or_default()
                )),
                Some((group_id, _, group)) => {
                    let retention = properties(group)
                        .and_then(|p| p.get("RetentionInDays"))
                        .and_then(|v| template.number(v));
                    if retention.is_none() {
                        problems.push(format!(
                            "log group {group_id} of function {function_id} has no RetentionInDays: its logs would be kept forever"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The IAM action that enables or disables an event source mapping (a queue consumer).
const MAPPING_SWITCH_ACTION: &str = "lambda:UpdateEventSourceMapping";
/// Resources that run code or tasks under a role named by their `Role` or `RoleArn`.
const ROLE_HOLDER_TYPES: [&str; 3] = [
    "AWS::Lambda::Function",
    "AWS::StepFunctions::StateMachine",
    "AWS::Serverless::StateMachine",
];
/// SAM resources that carry their own `Policies` and `Events`.
const SAM_TYPES: [&str; 2] = ["AWS::Serverless::Function", "AWS::Serverless::StateMachine"];

/// Whether any statement of a policy document allows `action`.
fn document_allows(document: Option<&Value>, action: &str) -> bool {
    statements(document)
        .into_iter()
        .any(|s| is_allow(s) && allows_action(s, action))
}

/// The logical ids of the resources that run on a schedule: the targets of an
/// `AWS::Events::Rule` with a `ScheduleExpression` or of an `AWS::Scheduler::Schedule`, and SAM
/// resources with a `Schedule` or `ScheduleV2` event.
fn scheduled_targets(template: &Template) -> Vec<String> {
    let mut ids = Vec::new();
    for (_, rule) in template.resources_of_type("AWS::Events::Rule") {
        let props = properties(rule);
        if props.and_then(|p| p.get("ScheduleExpression")).is_none() {
            continue;
        }
        let targets = props
            .and_then(|p| p.get("Targets"))
            .and_then(Value::as_sequence)
            .map(Vec::as_slice)
            .unwrap_or_default();
        ids.extend(
            targets
                .iter()
                .filter_map(|t| t.get("Arn").and_then(referenced_id)),
        );
    }
    for (_, schedule) in template.resources_of_type("AWS::Scheduler::Schedule") {
        ids.extend(
            properties(schedule)
                .and_then(|p| p.get("Target"))
                .and_then(|t| t.get("Arn"))
                .and_then(referenced_id),
        );
    }
    for sam_type in SAM_TYPES {
        for (id, resource) in template.resources_of_type(sam_type) {
            let scheduled = properties(resource)
                .and_then(|p| p.get("Events"))
                .and_then(Value::as_mapping)
                .is_some_and(|events| {
                    events.values().any(|e| {
                        matches!(
                            e.get("Type").and_then(Value::as_str),
                            Some("Schedule" | "ScheduleV2")
                        )
                    })
                });
            if scheduled {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// Whatever may switch a queue consumer off can also switch it back on without waiting for an
/// event: every function or state machine allowed `lambda:UpdateEventSourceMapping` (through
/// its role's inline policies, an `AWS::IAM::Policy` or `ManagedPolicy` attached to that role,
/// or its own SAM `Policies`) is also the target of a schedule, and every role so allowed is
/// one such a resource of this template runs under (a grant nothing here holds could be used
/// by anything, on any event). The rule reads the template's wiring, not the code: what the
/// scheduled run decides is the rehearsal's to show (tools/rehearse.py, the bulk pool steps).
pub fn consumer_switch_problems(template: &Template) -> Vec<String> {
    let mut roles: Vec<&str> = template
        .resources_of_type("AWS::IAM::Role")
        .filter(|(_, role)| {
            properties(role)
                .and_then(|p| p.get("Policies"))
                .and_then(Value::as_sequence)
                .is_some_and(|policies| {
                    policies.iter().any(|policy| {
                        document_allows(policy.get("PolicyDocument"), MAPPING_SWITCH_ACTION)
                    })
                })
        })
        .map(|(id, _)| id)
        .collect();
    for policy_type in ["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"] {
        for (_, policy) in template.resources_of_type(policy_type) {
            let props = properties(policy);
            if !document_allows(
                props.and_then(|p| p.get("PolicyDocument")),
                MAPPING_SWITCH_ACTION,
            ) {
                continue;
            }
            let attached = props
                .and_then(|p| p.get("Roles"))
                .and_then(Value::as_sequence)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for role in attached.iter().filter_map(ref_target) {
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
        }
    }
    let mut switches: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for role in &roles {
        let holders: Vec<&str> = ROLE_HOLDER_TYPES
            .iter()
            .flat_map(|ty| template.resources_of_type(ty))
            .filter(|(_, r)| {
                let props = properties(r);
                ["Role", "RoleArn"].iter().any(|field| {
                    props
                        .and_then(|p| p.get(*field))
                        .and_then(referenced_id)
                        .as_deref()
                        == Some(*role)
                })
            })
            .map(|(id, _)| id)
            .collect();
        if holders.is_empty() {
            problems.push(format!(
                "role {role} allows {MAPPING_SWITCH_ACTION}, but no function or state machine of this template runs under it: \
                 whatever uses it could switch the queue consumer off with no way back this template provides"
            ));
        }
        switches.extend(holders.into_iter().map(str::to_string));
    }
    for sam_type in SAM_TYPES {
        for (id, resource) in template.resources_of_type(sam_type) {
            let granted = properties(resource)
                .and_then(|p| p.get("Policies"))
                .and_then(Value::as_sequence)
                .is_some_and(|policies| {
                    policies
                        .iter()
                        .any(|policy| document_allows(Some(policy), MAPPING_SWITCH_ACTION))
                });
            if granted {
                switches.push(id.to_string());
            }
        }
    }
    let scheduled = scheduled_targets(template);
    for switch in switches {
        if !scheduled.contains(&switch) {
            problems.push(format!(
                "{switch} may call {MAPPING_SWITCH_ACTION} but runs on no schedule (an AWS::Events::Rule with a ScheduleExpression \
                 or an AWS::Scheduler::Schedule targeting it): a queue consumer it switches off waits for an event to come back on, \
                 and a job stuck RUNNABLE or an alarm that stays in ALARM sends none"
            ));
        }
    }
    problems
}

/// Every AWS Batch job definition in `batch` sends its containers' output with the `awslogs`
/// driver to a log group of that template with a `RetentionInDays` (Batch's default group,
/// `/aws/batch/job`, is shared by every job of the account and kept forever).
pub fn batch_log_group_problems(batch: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for (job_id, job) in batch.resources_of_type("AWS::Batch::JobDefinition") {
        let logging = properties(job)
            .and_then(|p| p.get("ContainerProperties"))
            .and_then(|c| c.get("LogConfiguration"));
        let driver = logging
            .and_then(|l| l.get("LogDriver"))
            .and_then(Value::as_str);
        let group_id = logging
            .and_then(|l| l.get("Options"))
            .and_then(|o| o.get("awslogs-group"))
            .and_then(ref_target);
        let group = group_id
            .and_then(|id| batch.resource(id))
            .filter(|g| g.get("Type").and_then(Value::as_str) == Some("AWS::Logs::LogGroup"));
        match (driver, group) {
            (Some("awslogs"), Some(group)) => {
                let retention = properties(group)
                    .and_then(|p| p.get("RetentionInDays"))
                    .and_then(|v| batch.number(v));
                if retention.is_none() {
                    problems.push(format!(
                        "{job_id}: log group {} has no RetentionInDays: the workers' logs would be kept forever",
                        group_id.unwrap_or_default()
                    ));
                }
            }
            _ => problems.push(format!(
                "{job_id}: ContainerProperties.LogConfiguration must use LogDriver awslogs with awslogs-group a !Ref to a \
                 log group of this template (found driver {driver:?}, group {group_id:?}): Batch's default /aws/batch/job keeps logs forever"
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The real template, read from the repository.
    fn real_template_text() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        std::fs::read_to_string(path).expect("infra/template.yaml is readable")
    }

    /// The real template with `from` (which must occur exactly once) replaced by `to`.
    fn mutated(from: &str, to: &str) -> Template {
        let text = real_template_text();
        assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
        Template::from_str(&text.replace(from, to), Path::new("template.yaml"))
            .expect("the mutated template parses")
    }

    #[test]
    fn the_real_template_passes_every_stack_rule() {
        let template = Template::from_str(&real_template_text(), Path::new("template.yaml"))
            .expect("the template parses");
        let result = check_stack(&template);
        assert!(result.mismatches.is_empty(), "{:?}", result.mismatches);
        assert_eq!(result.ok.len(), RULES.len(), "{:?}", result.ok);
    }

    #[test]
    fn an_alarm_topic_on_the_aws_managed_sns_key_is_rejected() {
        let template = mutated(
            "KmsMasterKeyId: !Ref AlarmTopicKey",
            "KmsMasterKeyId: alias/aws/sns",
        );
        let problems = alarm_topic_problems(&template);
        assert!(
            problems.len() == 1
                && problems[0].starts_with(
                    "topic AlarmTopic is encrypted with the AWS-managed key alias/aws/sns"
                )
                && problems[0].contains("CaptionDlqNotEmptyAlarm"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_alarm_topic_key_that_does_not_grant_cloudwatch_is_rejected() {
        let template = mutated(
            "Principal: {Service: cloudwatch.amazonaws.com}",
            "Principal: {Service: events.amazonaws.com}",
        );
        let problems = alarm_topic_problems(&template);
        assert!(
            problems.len() == 1
                && problems[0].contains(
                    "key AlarmTopicKey, whose KeyPolicy does not allow cloudwatch.amazonaws.com"
                ),
            "{problems:?}"
        );
    }

    #[test]
    fn an_alarm_topic_key_granting_cloudwatch_decrypt_only_is_rejected() {
        let template = mutated(
            "Action: [kms:Decrypt, kms:GenerateDataKey*]",
            "Action: [kms:Decrypt]",
        );
        assert!(!alarm_topic_problems(&template).is_empty());
    }

    #[test]
    fn an_access_log_target_without_a_delivery_grant_is_rejected() {
        let template = mutated(
            "Principal: {Service: logging.s3.amazonaws.com}",
            "Principal: {Service: s3.amazonaws.com}",
        );
        let problems = access_log_target_problems(&template);
        assert!(
            problems.len() == 1
                && problems[0].contains("bucket AccessLogBucket is the access-log target")
                && problems[0].contains("allows logging.s3.amazonaws.com s3:PutObject"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_access_log_delivery_grant_without_a_source_condition_is_rejected() {
        let template = mutated(
            "                aws:SourceAccount: !Ref AWS::AccountId\n              ArnLike:\n                aws:SourceArn:\n",
            "                aws:Unrelated: !Ref AWS::AccountId\n              ArnLike:\n                aws:Referer:\n",
        );
        let problems = access_log_target_problems(&template);
        assert!(
            problems.len() == 1
                && problems[0].contains("has no aws:SourceAccount or aws:SourceArn condition"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_function_without_a_log_group_is_rejected() {
        let template = mutated(
            "LogGroupName: !Sub \"/aws/lambda/${AWS::StackName}-faces\"",
            "LogGroupName: !Sub \"/coldpath/${AWS::StackName}-faces\"",
        );
        let problems = function_log_group_problems(&template);
        assert!(
            problems.len() == 1
                && problems[0].contains("function FacesFunction has no AWS::Logs::LogGroup named /aws/lambda/${AWS::StackName}-faces"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_log_group_without_retention_is_rejected() {
        let text = real_template_text();
        let retention = "      RetentionInDays: !Ref LogRetentionDays\n";
        // The first log group in the file loses its retention.
        let at = text
            .find(retention)
            .expect("a log group sets RetentionInDays");
        let mut edited = text.clone();
        edited.replace_range(at..at + retention.len(), "");
        let template = Template::from_str(&edited, Path::new("template.yaml")).unwrap();
        let problems = function_log_group_problems(&template);
        assert!(
            problems.len() == 1 && problems[0].contains("has no RetentionInDays"),
            "{problems:?}"
        );
    }

    /// A topic encrypted through a KMS alias of the template, whose key grants `services`.
    fn topic_through_alias(services: &str) -> Template {
        Template::from_str(
            &format!(
                "Resources:\n  Key:\n    Type: AWS::KMS::Key\n    Properties:\n      KeyPolicy:\n        Statement:\n          - Effect: Allow\n            Principal: {{Service: {services}}}\n            Action: kms:*\n            Resource: \"*\"\n  KeyAlias:\n    Type: AWS::KMS::Alias\n    Properties: {{AliasName: alias/alarms, TargetKeyId: !Ref Key}}\n  Topic:\n    Type: AWS::SNS::Topic\n    Properties: {{KmsMasterKeyId: !Ref KeyAlias}}\n  Alarm:\n    Type: AWS::CloudWatch::Alarm\n    Properties: {{OKActions: [!Ref Topic]}}\n"
            ),
            Path::new("t.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn a_topic_key_reached_through_an_alias_is_checked_like_the_key() {
        assert_eq!(
            alarm_topic_problems(&topic_through_alias("[cloudwatch.amazonaws.com]")),
            Vec::<String>::new()
        );
        let problems = alarm_topic_problems(&topic_through_alias("events.amazonaws.com"));
        assert!(
            problems.len() == 1
                && problems[0].contains("key Key, whose KeyPolicy does not allow")
                && problems[0].contains("(Alarm)"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_unnamed_function_is_matched_by_its_ref() {
        let template = Template::from_str(
            "Resources:\n  Fn:\n    Type: AWS::Lambda::Function\n  FnLogs:\n    Type: AWS::Logs::LogGroup\n    Properties:\n      LogGroupName: !Sub /aws/lambda/${Fn}\n      RetentionInDays: 7\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        assert_eq!(function_log_group_problems(&template), Vec::<String>::new());
    }

    /// The real GPU pool template with `from` (which must occur exactly once) replaced by `to`.
    fn mutated_batch(from: &str, to: &str) -> Template {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpu/batch.yaml");
        let text = std::fs::read_to_string(path).expect("infra/gpu/batch.yaml is readable");
        assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
        Template::from_str(&text.replace(from, to), Path::new("batch.yaml")).unwrap()
    }

    #[test]
    fn the_gpu_pool_logs_to_a_retained_group_and_is_rejected_otherwise() {
        let unchanged = mutated_batch("LogDriver: awslogs", "LogDriver: awslogs");
        assert_eq!(batch_log_group_problems(&unchanged), Vec::<String>::new());
        let default_group = mutated_batch("            awslogs-group: !Ref WorkerLogGroup\n", "");
        let problems = batch_log_group_problems(&default_group);
        assert!(
            problems.len() == 1
                && problems[0].starts_with(
                    "BulkJobDefinition: ContainerProperties.LogConfiguration must use"
                ),
            "{problems:?}"
        );
        // The workers' group (the controller's group has the same retention line).
        let unretained = mutated_batch(
            "-caption-bulk\"\n      RetentionInDays: !Ref LogRetentionDays\n",
            "-caption-bulk\"\n",
        );
        let problems = batch_log_group_problems(&unretained);
        assert!(
            problems.len() == 1
                && problems[0].contains("log group WorkerLogGroup has no RetentionInDays"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_gpu_pool_switches_its_consumer_with_a_scheduled_way_back() {
        let unchanged = mutated_batch(
            "ScheduleExpression: rate(5 minutes)",
            "ScheduleExpression: rate(5 minutes)",
        );
        assert_eq!(consumer_switch_problems(&unchanged), Vec::<String>::new());
    }

    #[test]
    fn a_consumer_switch_without_a_schedule_is_rejected() {
        // The reconciling schedule turned into one more event rule: the controller would then
        // run only when an event comes, and none comes for a job that never starts.
        let unscheduled = mutated_batch(
            "      ScheduleExpression: rate(5 minutes)\n",
            "      EventPattern: {source: [aws.batch]}\n",
        );
        let problems = consumer_switch_problems(&unscheduled);
        assert!(
            problems.len() == 1
                && problems[0].starts_with(
                    "PoolController may call lambda:UpdateEventSourceMapping but runs on no schedule"
                ),
            "{problems:?}"
        );
    }

    #[test]
    fn a_mapping_grant_no_resource_of_the_template_holds_is_rejected() {
        let orphan = mutated_batch(
            "      Role: !GetAtt PoolControllerRole.Arn\n",
            "      Role: !Sub \"arn:${AWS::Partition}:iam::${AWS::AccountId}:role/elsewhere\"\n",
        );
        let problems = consumer_switch_problems(&orphan);
        assert!(
            problems.len() == 1
                && problems[0].starts_with(
                    "role PoolControllerRole allows lambda:UpdateEventSourceMapping, but no function or state machine"
                ),
            "{problems:?}"
        );
    }

    /// Regression: the pool this replaced disabled the Lambda consumer when the backlog alarm
    /// went to ALARM and enabled it only when the alarm returned to OK. With no GPU quota the
    /// jobs never started, the alarm never returned, and the queue had no consumer until its
    /// messages expired.
    #[test]
    fn the_step_aside_on_the_alarm_alone_is_rejected() {
        let text = r#"
Resources:
  StepAsideRole:
    Type: AWS::IAM::Role
    Properties:
      Policies:
        - PolicyName: toggle
          PolicyDocument:
            Statement:
              - {Effect: Allow, Action: lambda:UpdateEventSourceMapping, Resource: "*"}
  StepAsideStateMachine:
    Type: AWS::StepFunctions::StateMachine
    Properties:
      RoleArn: !GetAtt StepAsideRole.Arn
  LambdaStepsAsideRule:
    Type: AWS::Events::Rule
    Properties:
      EventPattern: {detail: {state: {value: [ALARM]}}}
      Targets: [{Id: off, Arn: !Ref StepAsideStateMachine, Input: '{"enabled": false}'}]
  LambdaReturnsRule:
    Type: AWS::Events::Rule
    Properties:
      EventPattern: {detail: {state: {value: [OK]}}}
      Targets: [{Id: on, Arn: !Ref StepAsideStateMachine, Input: '{"enabled": true}'}]
"#;
        let template = Template::from_str(text, Path::new("batch.yaml")).unwrap();
        let problems = consumer_switch_problems(&template);
        assert!(
            problems.len() == 1 && problems[0].starts_with("StepAsideStateMachine may call"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_sam_function_allowed_to_switch_a_mapping_needs_a_schedule_event() {
        let text = |events: &str| {
            format!(
                r#"
Resources:
  Switch:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - Statement:
            - {{Effect: Allow, Action: ["lambda:Get*", "lambda:UpdateEventSourceMapping"], Resource: "*"}}
      Events:
{events}
"#
            )
        };
        let scheduled = text(
            "        Every5:\n          Type: Schedule\n          Properties: {Schedule: rate(5 minutes)}",
        );
        let template = Template::from_str(&scheduled, Path::new("template.yaml")).unwrap();
        assert_eq!(consumer_switch_problems(&template), Vec::<String>::new());
        let evented = text(
            "        OnAlarm:\n          Type: EventBridgeRule\n          Properties: {Pattern: {source: [aws.cloudwatch]}}",
        );
        let template = Template::from_str(&evented, Path::new("template.yaml")).unwrap();
        let problems = consumer_switch_problems(&template);
        assert!(
            problems.len() == 1 && problems[0].starts_with("Switch may call"),
            "{problems:?}"
        );
    }

    #[test]
    fn action_patterns_match_as_iam_does() {
        assert!(action_matches(
            "kms:GenerateDataKey*",
            "kms:GenerateDataKey"
        ));
        assert!(action_matches("kms:*", "kms:Decrypt"));
        assert!(action_matches("*", "kms:Decrypt"));
        assert!(action_matches("KMS:decrypt", "kms:Decrypt"));
        assert!(!action_matches("kms:Decrypt", "kms:GenerateDataKey"));
        assert!(!action_matches(
            "kms:GenerateDataKeyPair*",
            "kms:GenerateDataKey"
        ));
        assert!(action_matches("s3:Put*Object", "s3:PutObject"));
    }
}
