use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// A sha256 digest, parsed from and shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(format!(
                "expected 64 hex digits, found {} characters",
                s.len()
            ));
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("not hex: {e}"))?;
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Hashes a file in fixed-size chunks, so a large model never has to fit in memory twice.
pub fn sha256_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// What a file looked like when its digest was noted. A file rewritten or replaced since (another
/// inode, size or modification time) no longer matches, so a noted digest is never stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: u128,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        let mtime_ns = m
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(FileStamp {
            dev,
            ino,
            len: m.len(),
            mtime_ns,
        })
    }
}

/// Digests this process already knows, so a model file is hashed at most once per process: the
/// store notes each digest it verified (or each pinned digest of a file it fetched and verified
/// earlier), and the optimised-graph cache key reads it back instead of hashing the file again.
static KNOWN: Mutex<Option<HashMap<PathBuf, (FileStamp, Sha256Digest)>>> = Mutex::new(None);

/// Notes that the file at `path`, as it is now, has `digest`. Only for digests that were checked
/// against the file's bytes (or a file that can only have got there after such a check).
pub(crate) fn note_digest(path: &Path, digest: Sha256Digest) {
    let Ok(stamp) = FileStamp::of(path) else {
        return;
    };
    // The map holds plain data, so a panic elsewhere cannot leave it half-updated.
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    known
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), (stamp, digest));
}

/// The sha256 of the file at `path`: the digest noted for it if the file is unchanged since,
/// otherwise hashed now (and noted).
pub fn file_digest(path: &Path) -> std::io::Result<Sha256Digest> {
    let stamp = FileStamp::of(path)?;
    {
        let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((noted, digest)) = known.as_ref().and_then(|k| k.get(path))
            && *noted == stamp
        {
            return Ok(*digest);
        }
    }
    let digest = sha256_file(path)?;
    note_digest(path, digest);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("abc") from FIPS 180-2, appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_and_prints_hex() {
        let d: Sha256Digest = ABC.parse().unwrap();
        assert_eq!(d.to_string(), ABC);
        assert_eq!(Sha256Digest::of_bytes(b"abc"), d);
        assert_eq!(ABC.to_uppercase().parse::<Sha256Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(
            "abc"
                .parse::<Sha256Digest>()
                .unwrap_err()
                .contains("64 hex")
        );
        let not_hex = "z".repeat(64);
        assert!(
            not_hex
                .parse::<Sha256Digest>()
                .unwrap_err()
                .contains("not hex")
        );
    }

    #[test]
    fn hashes_files_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), Sha256Digest::of_bytes(&data));
    }

    #[test]
    fn file_digest_uses_a_noted_digest_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.onnx");
        std::fs::write(&p, b"abc").unwrap();
        // A noted digest stands in for hashing: this one is deliberately not the file's, to show
        // it was used.
        let noted = Sha256Digest::of_bytes(b"noted");
        note_digest(&p, noted);
        assert_eq!(file_digest(&p).unwrap(), noted);
        // Rewritten (another size): hashed again, never the stale digest.
        std::fs::write(&p, b"abcd").unwrap();
        assert_eq!(file_digest(&p).unwrap(), Sha256Digest::of_bytes(b"abcd"));
        // Replaced by another file under the same name: another inode.
        let other = dir.path().join("other");
        std::fs::write(&other, b"efgh").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert_eq!(file_digest(&p).unwrap(), Sha256Digest::of_bytes(b"efgh"));
        assert!(file_digest(&dir.path().join("missing")).is_err());
    }
}
