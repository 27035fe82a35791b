//! `clip search <RESULTS_DIR> <QUERY>`: photo search by words over the vector documents the
//! upload path wrote to a local result sink, the same flow a vector database runs (embed the
//! query with the text tower, rank the photos by cosine). For trying the model and the deployment
//! out; a product searches in its vector database (docs/photo-search.md).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A photo's vector as read from its document.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoVector {
    pub photo: String,
    pub vector: Vec<f32>,
}

/// A document that was not searched, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    pub reason: String,
}

/// Every vector document under `dir` made by `model` and `dimensions` wide. Documents of
/// another model are skipped, not ranked: vectors of two models share no space.
pub fn load_vectors(
    dir: &Path,
    model: &str,
    dimensions: usize,
) -> std::io::Result<(Vec<PhotoVector>, Vec<Skipped>)> {
    let mut files = Vec::new();
    collect_json(dir, &mut files)?;
    files.sort();
    let (mut photos, mut skipped) = (Vec::new(), Vec::new());
    for file in files {
        match read_document(&file, model, dimensions) {
            Ok(p) => photos.push(p),
            Err(reason) => skipped.push(Skipped { file, reason }),
        }
    }
    Ok((photos, skipped))
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_document(file: &Path, model: &str, dimensions: usize) -> Result<PhotoVector, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let found = doc.pointer("/payload/model").and_then(Value::as_str);
    if found != Some(model) {
        return Err(format!("made by model {found:?}, not {model:?}"));
    }
    let photo = doc
        .pointer("/payload/photo")
        .and_then(Value::as_str)
        .ok_or("no payload.photo")?
        .to_string();
    let vector: Vec<f32> = doc
        .get("vector")
        .and_then(Value::as_array)
        .ok_or("no vector")?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|x| x as f32)
                .ok_or("a vector entry is not a number")
        })
        .collect::<Result<_, _>>()?;
    if vector.len() != dimensions {
        return Err(format!(
            "expected a {dimensions}-wide vector, found {}",
            vector.len()
        ));
    }
    Ok(PhotoVector { photo, vector })
}

/// The `top` photos by cosine to `query`, best first. Both sides are L2-normalised by the
/// towers, so the cosine is the dot product.
pub fn rank<'a>(query: &[f32], photos: &'a [PhotoVector], top: usize) -> Vec<(&'a str, f32)> {
    let mut scored: Vec<(&str, f32)> = photos
        .iter()
        .map(|p| {
            let dot = p.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            (p.photo.as_str(), dot)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    scored.truncate(top);
    scored
}

/// The command's output.
pub fn report(
    query: &str,
    model: &str,
    ranked: &[(&str, f32)],
    searched: usize,
    skipped: &[Skipped],
) -> Value {
    json!({
        "query": query,
        "model": model,
        "searched": searched,
        "results": ranked.iter().enumerate().map(|(i, (photo, score))| json!({
            "rank": i + 1, "photo": photo, "score": score,
        })).collect::<Vec<_>>(),
        "skipped": skipped.iter().map(|s| json!({
            "file": s.file.display().to_string(), "reason": s.reason,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, doc: Value) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, doc.to_string()).unwrap();
    }

    fn doc(photo: &str, model: &str, vector: &[f32]) -> Value {
        json!({"id": "x", "vector": vector, "payload": {"photo": photo, "model": model}})
    }

    #[test]
    fn ranks_this_models_vectors_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "clip/photos/a.jpg.json",
            doc("s3://photos/a.jpg", "m", &[1.0, 0.0]),
        );
        write(
            dir.path(),
            "clip/photos/b.jpg.json",
            doc("s3://photos/b.jpg", "m", &[0.6, 0.8]),
        );
        write(
            dir.path(),
            "clip/photos/c.jpg.json",
            doc("s3://photos/c.jpg", "other", &[0.0, 1.0]),
        );
        write(
            dir.path(),
            "clip/photos/d.jpg.json",
            doc("s3://photos/d.jpg", "m", &[1.0]),
        );
        std::fs::write(dir.path().join("clip/photos/e.jpg.json"), "{").unwrap();
        let (photos, skipped) = load_vectors(dir.path(), "m", 2).unwrap();
        assert_eq!(photos.len(), 2);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.reason.contains("\"other\"")));
        assert!(skipped.iter().any(|s| s.reason.contains("2-wide")));
        let ranked = rank(&[0.0, 1.0], &photos, 5);
        assert_eq!(ranked[0].0, "s3://photos/b.jpg");
        assert!((ranked[0].1 - 0.8).abs() < 1e-6);
        assert_eq!(rank(&[1.0, 0.0], &photos, 1), [("s3://photos/a.jpg", 1.0)]);
        let out = report("q", "m", &ranked, photos.len(), &skipped);
        assert_eq!(out["results"][0]["rank"], 1);
        assert_eq!(out["skipped"].as_array().unwrap().len(), 3);
    }
}
