//! The template as `coldpath check` reads it: CloudFormation YAML with short-form intrinsics
//! (`!Ref`, `!GetAtt`, `!FindInMap`), which `serde_norway` keeps as tagged values. A `!Ref` to a
//! template parameter resolves to the parameter's `Default`, which is what a deployment without
//! overrides gets (a `!FindInMap` keyed by such a `!Ref` too).

use std::path::{Path, PathBuf};

use serde_norway::Value;

use crate::error::TemplateError;

/// The parsed template and its parameters' defaults.
pub struct Template {
    pub(super) path: PathBuf,
    pub(crate) root: Value,
}

impl Template {
    pub fn from_file(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|e| TemplateError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_str(&text, path)
    }

    pub fn from_str(text: &str, path: &Path) -> Result<Self, TemplateError> {
        let root: Value = serde_norway::from_str(text).map_err(|e| TemplateError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if root.get("Resources").and_then(Value::as_mapping).is_none() {
            return Err(TemplateError::Shape {
                path: path.to_path_buf(),
                what: "no Resources mapping".to_string(),
            });
        }
        Ok(Template {
            path: path.to_path_buf(),
            root,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn resource(&self, id: &str) -> Option<&Value> {
        self.root.get("Resources")?.get(id)
    }

    /// The logical ids and bodies of the resources of one type, in template order.
    pub(crate) fn resources_of_type<'a>(
        &'a self,
        resource_type: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.root
            .get("Resources")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(resource_type))
            .filter_map(|(id, r)| Some((id.as_str()?, r)))
    }

    /// A property of a function, falling back to `Globals.Function`.
    pub(super) fn function_property<'a>(
        &'a self,
        function: &'a Value,
        name: &str,
    ) -> Option<&'a Value> {
        function
            .get("Properties")
            .and_then(|p| p.get(name))
            .or_else(|| self.root.get("Globals")?.get("Function")?.get(name))
    }

    /// A number, or a `!Ref` / `{Ref: ...}` to a parameter whose `Default` is a number, or a
    /// `!FindInMap` whose value is one.
    pub(crate) fn number(&self, value: &Value) -> Option<f64> {
        match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => match ref_target(value) {
                Some(parameter) => self.number(self.parameter_default(parameter)?),
                None => self.number(self.find_in_map(value)?),
            },
        }
    }

    pub(crate) fn string<'a>(&'a self, value: &'a Value) -> Option<&'a str> {
        match value {
            Value::String(s) => Some(s),
            _ => self.parameter_default(ref_target(value)?)?.as_str(),
        }
    }

    /// The value a `!FindInMap [Map, TopKey, SecondKey]` (or `{Fn::FindInMap: [...]}`) selects,
    /// each key a literal or a `!Ref` to a parameter (its default). Mapping keys are strings,
    /// so a number key is looked up as its text (a Number parameter's default 120 is "120").
    fn find_in_map(&self, value: &Value) -> Option<&Value> {
        let [map_name, top_key, second_key] = find_in_map_args(value)?;
        let key_text = |key: &Value| -> Option<String> {
            let key = match ref_target(key) {
                Some(parameter) => self.parameter_default(parameter)?,
                None => key,
            };
            match key {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        self.root
            .get("Mappings")?
            .get(map_name.as_str()?)?
            .get(key_text(top_key)?)?
            .get(key_text(second_key)?)
    }

    pub(crate) fn parameter_default(&self, name: &str) -> Option<&Value> {
        self.root.get("Parameters")?.get(name)?.get("Default")
    }
}

/// The logical id a `!Ref X` or `{Ref: X}` points at.
pub(crate) fn ref_target(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(t) if tag_is(&t.tag, "Ref") => t.value.as_str(),
        Value::Mapping(m) if m.len() == 1 => m.get("Ref")?.as_str(),
        _ => None,
    }
}

/// The logical id a `!GetAtt X.Arn`, `!GetAtt [X, Arn]` or `{Fn::GetAtt: [X, Arn]}` points at.
pub(crate) fn get_att_target(value: &Value) -> Option<String> {
    let inner = match value {
        Value::Tagged(t) if tag_is(&t.tag, "GetAtt") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::GetAtt")?,
        _ => return None,
    };
    match inner {
        Value::String(s) => s.split('.').next().map(str::to_string),
        Value::Sequence(seq) => seq.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

pub(crate) fn tag_is(tag: &serde_norway::value::Tag, name: &str) -> bool {
    tag.to_string().trim_start_matches('!') == name
}

/// The three arguments of a `!FindInMap [map, top key, second key]` (or `{Fn::FindInMap: [...]}`).
pub(super) fn find_in_map_args(value: &Value) -> Option<&[Value; 3]> {
    let args = match value {
        Value::Tagged(t) if tag_is(&t.tag, "FindInMap") => &t.value,
        Value::Mapping(m) if m.len() == 1 => m.get("Fn::FindInMap")?,
        _ => return None,
    };
    args.as_sequence()?.as_slice().try_into().ok()
}

/// `(map, parameter, attribute)` of a `!FindInMap [map, !Ref parameter, attribute]`.
pub(super) fn find_in_map_by_parameter(value: &Value) -> Option<(&str, &str, &str)> {
    let [map_name, top_key, second_key] = find_in_map_args(value)?;
    Some((
        map_name.as_str()?,
        ref_target(top_key)?,
        second_key.as_str()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_form_refs_resolve_to_parameter_defaults() {
        let t = Template::from_str(
            "Parameters:\n  Mem: {Type: Number, Default: 1024}\nResources:\n  A:\n    Type: X\n    Properties:\n      M: !Ref Mem\n      N: {Ref: Mem}\n      Q: !GetAtt Queue.Arn\n      R: !GetAtt [Other, Arn]\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let props = t.resource("A").unwrap().get("Properties").unwrap();
        assert_eq!(t.number(props.get("M").unwrap()), Some(1024.0));
        assert_eq!(t.number(props.get("N").unwrap()), Some(1024.0));
        assert_eq!(
            get_att_target(props.get("Q").unwrap()).as_deref(),
            Some("Queue")
        );
        assert_eq!(
            get_att_target(props.get("R").unwrap()).as_deref(),
            Some("Other")
        );
    }

    #[test]
    fn a_template_without_resources_is_a_shape_error() {
        assert!(matches!(
            Template::from_str("Parameters: {}\n", Path::new("t.yaml")),
            Err(TemplateError::Shape { .. })
        ));
        assert!(matches!(
            Template::from_str("Resources: [\n", Path::new("t.yaml")),
            Err(TemplateError::Parse { .. })
        ));
    }
}
