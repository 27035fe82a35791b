//! The variables a deployment sets: a Lambda function's (its own over `Globals`), every
//! `Environment` list of a CloudFormation template (Batch job definitions, ECS tasks) and a
//! Dockerfile's `ENV` lines.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

use super::template::Template;

/// `ENV` names and values of a Dockerfile's final stage (what the image runs with; an earlier
/// stage's settings stay in that stage).
pub fn dockerfile_final_env(text: &str) -> BTreeMap<String, String> {
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("FROM "))
        .unwrap_or(0);
    let mut env = BTreeMap::new();
    for line in &lines[last..] {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        if rest.contains('=') {
            for token in rest.split_whitespace() {
                if let Some((name, value)) = token.split_once('=') {
                    env.insert(name.to_string(), value.trim_matches('"').to_string());
                }
            }
        } else if let Some((name, value)) = rest.trim().split_once(char::is_whitespace) {
            env.insert(name.to_string(), value.trim().to_string());
        }
    }
    env
}

/// `ENV NAME=value` / `ENV NAME value` names of a Dockerfile, continuation lines included.
pub fn dockerfile_env_names(text: &str) -> BTreeSet<String> {
    let joined = text.replace("\\\n", " ");
    let mut names = BTreeSet::new();
    for line in joined.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("ENV ") else {
            continue;
        };
        for token in rest.split_whitespace() {
            if let Some((name, _)) = token.split_once('=') {
                names.insert(name.to_string());
            }
        }
        if !rest.contains('=')
            && let Some(name) = rest.split_whitespace().next()
        {
            names.insert(name.to_string());
        }
    }
    names
}

/// `Name:` entries of every `Environment` list in a CloudFormation template (Batch job
/// definitions use a list of `{Name, Value}`).
pub fn cloudformation_env_names(template: &Template) -> BTreeSet<String> {
    fn walk(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Mapping(m) => {
                for (k, child) in m {
                    if k.as_str() == Some("Environment")
                        && let Some(seq) = child.as_sequence()
                    {
                        for item in seq {
                            if let Some(name) = item.get("Name").and_then(Value::as_str) {
                                out.insert(name.to_string());
                            }
                        }
                    }
                    walk(child, out);
                }
            }
            Value::Sequence(s) => s.iter().for_each(|c| walk(c, out)),
            Value::Tagged(t) => walk(&t.value, out),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&template.root, &mut out);
    out
}

/// Names set by a Lambda function's `Environment.Variables` in the SAM template.
pub fn function_env_names(template: &Template, function: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for source in [
        template
            .resource(function)
            .and_then(|f| f.get("Properties")),
        template.root.get("Globals").and_then(|g| g.get("Function")),
    ] {
        if let Some(vars) = source
            .and_then(|p| p.get("Environment"))
            .and_then(|e| e.get("Variables"))
            .and_then(Value::as_mapping)
        {
            out.extend(vars.keys().filter_map(Value::as_str).map(str::to_string));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_env_names_cover_both_forms_and_continuations() {
        let names = dockerfile_env_names(
            "FROM x\nENV A=1 \\\n    B=\"two words\"\nENV C 3\nRUN echo D=4\n",
        );
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }

    #[test]
    fn the_final_stage_env_leaves_earlier_stages_out() {
        let env = dockerfile_final_env(
            "FROM a AS b\nENV EARLY=1\nFROM c\nENV PORT=8080 \\\n    X=\"y\"\nENV Z 3\n",
        );
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("PORT", "8080"), ("X", "y"), ("Z", "3")]);
    }
}
