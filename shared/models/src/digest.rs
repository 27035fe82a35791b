use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

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
}
