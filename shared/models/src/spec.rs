use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use coldpath_core::config::{self, ConfigError, EnvSource};

use crate::Sha256Digest;

/// What a model is for; it decides which pipeline may load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    TextEmbedding,
    FaceDetector,
    FaceRecognizer,
    ImageCaptioner,
    /// A CLIP-family model: an image tower and a text tower into one embedding space.
    ImageTextEmbedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::TextEmbedding => "text-embedding",
            ModelKind::FaceDetector => "face-detector",
            ModelKind::FaceRecognizer => "face-recognizer",
            ModelKind::ImageCaptioner => "image-captioner",
            ModelKind::ImageTextEmbedding => "image-text-embedding",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a model's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory bundled with the package, layer or container image.
    Local(PathBuf),
    /// `s3://bucket/prefix`: each file is the object `prefix/<file name>`.
    S3 { bucket: String, prefix: String },
}

impl ModelSource {
    /// The location of one file of the model, for messages and for fetching.
    pub fn uri_of(&self, file: &str) -> String {
        match self {
            ModelSource::Local(dir) => dir.join(file).display().to_string(),
            ModelSource::S3 { bucket, prefix } => format!("s3://{bucket}/{}", s3_key(prefix, file)),
        }
    }
}

/// The object key of `file` under `prefix`, with exactly one `/` between them.
pub(crate) fn s3_key(prefix: &str, file: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        file.to_string()
    } else {
        format!("{prefix}/{file}")
    }
}

impl FromStr for ModelSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("an s3://bucket/prefix URI with a bucket name".to_string());
            }
            return Ok(ModelSource::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if s.contains("://") {
            return Err("a local directory or an s3://bucket/prefix URI".to_string());
        }
        Ok(ModelSource::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Local(dir) => write!(f, "{}", dir.display()),
            ModelSource::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// One file a model needs, and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// A relative path inside the model's directory or prefix.
    pub name: String,
    /// Required for remote sources; for a local bundle it is checked when given.
    pub sha256: Option<Sha256Digest>,
}

/// A model: what it is, which files it needs and where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub kind: ModelKind,
    pub source: ModelSource,
    pub files: Vec<ModelFile>,
}

impl ModelSpec {
    /// Reads a spec from `<PREFIX>_NAME`, `<PREFIX>_SOURCE` and `<PREFIX>_SHA256`.
    ///
    /// `<PREFIX>_SHA256` lists digests as `file=hex,file=hex`; every name in it must be one of
    /// `files`, so that a typo cannot silently leave a file unverified.
    pub fn from_env(
        env: &impl EnvSource,
        prefix: &str,
        kind: ModelKind,
        default_name: &str,
        default_source: &str,
        files: &[&str],
    ) -> Result<ModelSpec, ConfigError> {
        let name_var = format!("{prefix}_NAME");
        let source_var = format!("{prefix}_SOURCE");
        let sha_var = format!("{prefix}_SHA256");
        let name = config::get(env, &name_var).unwrap_or_else(|| default_name.to_string());
        let raw_source =
            config::get(env, &source_var).unwrap_or_else(|| default_source.to_string());
        let source = raw_source
            .parse()
            .map_err(|expected: String| ConfigError::invalid(&source_var, expected, &raw_source))?;
        let mut files: Vec<ModelFile> = files
            .iter()
            .map(|f| ModelFile {
                name: f.to_string(),
                sha256: None,
            })
            .collect();
        if let Some(list) = config::get(env, &sha_var) {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let expected = "file=<64 hex digits>, comma-separated";
                let (file, hex) = entry
                    .split_once('=')
                    .ok_or_else(|| ConfigError::invalid(&sha_var, expected, entry))?;
                let digest: Sha256Digest = hex
                    .parse()
                    .map_err(|e: String| ConfigError::invalid(&sha_var, e, entry))?;
                let known = join_names(&files);
                let slot = files
                    .iter_mut()
                    .find(|f| f.name == file.trim())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            &sha_var,
                            format!("one of the model's files ({known})"),
                            file,
                        )
                    })?;
                slot.sha256 = Some(digest);
            }
        }
        let spec = ModelSpec {
            name,
            kind,
            source,
            files,
        };
        spec.validate()
            .map_err(|e| ConfigError::invalid(&source_var, e, raw_source))?;
        Ok(spec)
    }

    /// Checks what types cannot: file names stay inside the model directory.
    pub fn validate(&self) -> Result<(), String> {
        for f in &self.files {
            let p = Path::new(&f.name);
            let inside =
                !f.name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(format!(
                    "model file names relative to the model directory, not {:?}",
                    f.name
                ));
            }
        }
        Ok(())
    }

    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

fn join_names(files: &[ModelFile]) -> String {
    files
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_sources() {
        assert_eq!(
            "s3://models/minilm/v1".parse::<ModelSource>(),
            Ok(ModelSource::S3 {
                bucket: "models".into(),
                prefix: "minilm/v1".into()
            })
        );
        assert_eq!(
            "s3://models".parse::<ModelSource>(),
            Ok(ModelSource::S3 {
                bucket: "models".into(),
                prefix: "".into()
            })
        );
        assert!("s3:///x".parse::<ModelSource>().is_err());
        assert!("https://example.invalid/m".parse::<ModelSource>().is_err());
        assert_eq!(
            "/opt/models/m".parse::<ModelSource>(),
            Ok(ModelSource::Local("/opt/models/m".into()))
        );
    }

    #[test]
    fn s3_keys_join_with_one_slash() {
        let src: ModelSource = "s3://b/p/".parse().unwrap();
        assert_eq!(src.uri_of("model.onnx"), "s3://b/p/model.onnx");
        let root: ModelSource = "s3://b".parse().unwrap();
        assert_eq!(root.uri_of("model.onnx"), "s3://b/model.onnx");
    }

    #[test]
    fn reads_spec_from_env_with_checksums() {
        let env = MapEnv::new([
            ("M_SOURCE", "s3://bucket/prefix".to_string()),
            ("M_SHA256", format!("model.onnx={A}, tokenizer.json={A}")),
        ]);
        let spec = ModelSpec::from_env(
            &env,
            "M",
            ModelKind::TextEmbedding,
            "mini",
            "/opt/models/mini",
            &["model.onnx", "tokenizer.json"],
        )
        .unwrap();
        assert_eq!(spec.name, "mini");
        assert_eq!(
            spec.file("model.onnx").unwrap().sha256.unwrap().to_string(),
            A
        );
        assert!(spec.file("tokenizer.json").unwrap().sha256.is_some());
    }

    #[test]
    fn unknown_file_in_checksums_is_an_error() {
        let env = MapEnv::new([("M_SHA256", format!("modle.onnx={A}"))]);
        let err = ModelSpec::from_env(
            &env,
            "M",
            ModelKind::TextEmbedding,
            "m",
            "/m",
            &["model.onnx"],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("M_SHA256: expected one of the model's files (model.onnx)"),
            "{err}"
        );
    }

    #[test]
    fn bad_digest_and_bad_source_are_errors() {
        let env = MapEnv::new([("M_SHA256", "model.onnx=abc")]);
        let err = ModelSpec::from_env(
            &env,
            "M",
            ModelKind::TextEmbedding,
            "m",
            "/m",
            &["model.onnx"],
        )
        .unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let env = MapEnv::new([("M_SOURCE", "ftp://x/y")]);
        assert!(
            ModelSpec::from_env(
                &env,
                "M",
                ModelKind::TextEmbedding,
                "m",
                "/m",
                &["model.onnx"]
            )
            .is_err()
        );
    }

    #[test]
    fn file_names_must_stay_inside_the_model_directory() {
        for bad in ["../etc/passwd", "/abs", ""] {
            let spec = ModelSpec {
                name: "m".into(),
                kind: ModelKind::TextEmbedding,
                source: ModelSource::Local("/m".into()),
                files: vec![ModelFile {
                    name: bad.into(),
                    sha256: None,
                }],
            };
            assert!(spec.validate().is_err(), "{bad:?}");
        }
    }
}
