//! The little of ISO BMFF / HEIF (ISO/IEC 14496-12, 23008-12) that must be read before a HEIC or
//! AVIF file is handed to a C decoder: which brand it is, how large its primary image says it is
//! (`ispe`), and how that image is turned (`irot`, `imir`).
//!
//! Reading this ourselves keeps the guarantees of the other formats: the size is checked from the
//! header before any library allocates pixels, [`crate::dimensions`] answers without loading a
//! library, and a refusal names the numbers. Every read is bounds-checked; a malformed box is an
//! [`ImageError::Undecodable`] and never a panic.

use crate::ImageError;

/// What a HEIF-family file is, by its `ftyp` brands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// HEVC-coded HEIF: what an iPhone saves (`heic`, `heix`, ... or the generic `mif1`).
    Heic,
    /// AV1-coded (`avif`, `avis`).
    Avif,
}

/// The primary image as the container describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Primary {
    /// `ispe` of the primary item: the stored size, before `irot`/`imir`.
    pub width: u32,
    pub height: u32,
    /// `irot`: anti-clockwise turns of 90° (0 to 3).
    pub irot: u8,
    /// `imir` axis: 0 exchanges top and bottom, 1 left and right (ISO/IEC 23008-12:2022).
    pub imir: Option<u8>,
}

impl Primary {
    /// The EXIF orientation (1 to 8) that has the same effect as `irot` then `imir`, the order
    /// MIAF requires for transformative properties.
    pub fn exif_orientation(&self) -> u8 {
        // Without a mirror: 90° anti-clockwise is EXIF 8, 180° is 3, 270° anti-clockwise is 6.
        // A left-right mirror after the turn gives 2, 7, 4, 5; a top-bottom mirror equals a
        // left-right one after a further 180°. Checked against `image`'s own ops in the tests.
        const LEFT_RIGHT: [u8; 4] = [2, 7, 4, 5];
        match self.imir {
            None => [1, 8, 3, 6][usize::from(self.irot & 3)],
            Some(1) => LEFT_RIGHT[usize::from(self.irot & 3)],
            Some(_) => LEFT_RIGHT[usize::from((self.irot + 2) & 3)],
        }
    }

    /// The size after `irot`: what the decoded, upright image measures.
    pub fn upright_size(&self) -> (u32, u32) {
        if self.irot & 1 == 1 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// The family from the `ftyp` box, if the bytes start with one; `Err` names an ISO BMFF file
/// of another kind (a video, a JPEG XL container) so the refusal says what was sent.
pub(crate) fn sniff(bytes: &[u8]) -> Option<Result<Family, String>> {
    if bytes.get(4..8) != Some(b"ftyp") {
        return None;
    }
    // The brands that are there, even if the file is cut off inside the box: a truncated HEIC
    // is still a HEIC, and its refusal should say it does not decode.
    let size = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let end = if size >= 16 {
        size.min(bytes.len())
    } else {
        bytes.len().min(16)
    };
    let body = &bytes[8..end.max(8)];
    if body.len() < 4 {
        return None;
    }
    // major_brand, minor_version, then compatible brands, four bytes each.
    let brands: Vec<&[u8]> = std::iter::once(&body[..4])
        .chain(body.get(8..).unwrap_or_default().chunks_exact(4))
        .collect();
    let has = |set: &[&[u8; 4]]| brands.iter().any(|b| set.iter().any(|s| *b == &s[..]));
    if has(&[b"avif", b"avis"]) {
        Some(Ok(Family::Avif))
    } else if has(&[
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
    ]) {
        Some(Ok(Family::Heic))
    } else {
        let major = String::from_utf8_lossy(&body[..4]).into_owned();
        Some(Err(format!(
            "an ISO BMFF file of brand {major:?} (not HEIF or AVIF)"
        )))
    }
}

/// Reads the primary item's `ispe`, `irot` and `imir` from the `meta` box.
pub(crate) fn primary(bytes: &[u8], format: &'static str) -> Result<Primary, ImageError> {
    let bad = |reason: &str| ImageError::Undecodable {
        format,
        reason: reason.to_string(),
    };
    let meta = find(bytes, b"meta")
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad("no meta box: the file has no image items"))?;
    let meta = full_box_body(meta).ok_or_else(|| bad("meta box too short"))?;
    let pitm = find(meta, b"pitm")
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad("no pitm box: the primary image is not named"))?;
    let primary_id = match pitm {
        [0, _, _, _, a, b, ..] => u32::from(u16::from_be_bytes([*a, *b])),
        [_, _, _, _, a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => return Err(bad("pitm box too short")),
    };
    let iprp = find(meta, b"iprp")
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad("no iprp box: the image has no properties"))?;
    let ipco = find(iprp, b"ipco")
        .map_err(|e| bad(&e))?
        .ok_or_else(|| bad("no ipco box"))?;
    let mut properties = Vec::new();
    let mut rest = ipco;
    while let Some((kind, body, after)) = next_box(rest).map_err(|e| bad(&e))? {
        properties.push((kind, body));
        rest = after;
    }
    let associated = associations(iprp, primary_id).map_err(|e| bad(&e))?;
    let mut out = Primary {
        width: 0,
        height: 0,
        irot: 0,
        imir: None,
    };
    let mut has_ispe = false;
    for index in associated {
        // Index 0 means "no property"; the others count from 1.
        let Some(&(kind, body)) = index.checked_sub(1).and_then(|i| properties.get(i)) else {
            continue;
        };
        match &kind {
            b"ispe" => {
                let b = full_box_body(body).ok_or_else(|| bad("ispe box too short"))?;
                let [w0, w1, w2, w3, h0, h1, h2, h3, ..] = *b else {
                    return Err(bad("ispe box too short"));
                };
                out.width = u32::from_be_bytes([w0, w1, w2, w3]);
                out.height = u32::from_be_bytes([h0, h1, h2, h3]);
                has_ispe = true;
            }
            b"irot" => out.irot = body.first().copied().unwrap_or(0) & 3,
            b"imir" => out.imir = Some(body.first().copied().unwrap_or(0) & 1),
            _ => {}
        }
    }
    if !has_ispe {
        return Err(bad("the primary image has no ispe (size) property"));
    }
    if out.width == 0 || out.height == 0 {
        return Err(bad(&format!(
            "the primary image claims a size of {}x{}",
            out.width, out.height
        )));
    }
    Ok(out)
}

/// The property indices (1-based) the `ipma` boxes associate with `item`.
fn associations(iprp: &[u8], item: u32) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    let mut rest = iprp;
    while let Some((kind, body, after)) = next_box(rest)? {
        rest = after;
        if &kind != b"ipma" {
            continue;
        }
        let mut r = Reader(body);
        let version = r.u8()?;
        let flags = r.u24()?;
        let entries = r.u32()?;
        for _ in 0..entries {
            let id = if version < 1 {
                u32::from(r.u16()?)
            } else {
                r.u32()?
            };
            let count = r.u8()?;
            for _ in 0..count {
                // The top bit is "essential"; the rest is the index.
                let index = if flags & 1 == 1 {
                    usize::from(r.u16()? & 0x7fff)
                } else {
                    usize::from(r.u8()? & 0x7f)
                };
                if id == item {
                    out.push(index);
                }
            }
        }
    }
    Ok(out)
}

/// The body of the first box of type `kind` among the boxes in `bytes` (not recursing).
fn find<'a>(bytes: &'a [u8], kind: &[u8; 4]) -> Result<Option<&'a [u8]>, String> {
    let mut rest = bytes;
    while let Some((k, body, after)) = next_box(rest)? {
        if &k == kind {
            return Ok(Some(body));
        }
        rest = after;
    }
    Ok(None)
}

/// A full box's body after its version and flags.
fn full_box_body(body: &[u8]) -> Option<&[u8]> {
    body.get(4..)
}

/// A box split off the data: its type, its body, and the bytes after it.
type Split<'a> = ([u8; 4], &'a [u8], &'a [u8]);

/// Splits the first box off `bytes`: its type, its body, and what follows it. `Ok(None)` at the
/// end of the data; `Err` when a box header is cut off or claims more bytes than there are.
fn next_box(bytes: &[u8]) -> Result<Option<Split<'_>>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut r = Reader(bytes);
    let short = |_| "a box header is cut off".to_string();
    let size32 = r.u32().map_err(short)?;
    let kind: [u8; 4] = r.take(4).map_err(short)?.try_into().expect("4 bytes");
    let (header, size) = match size32 {
        // The box runs to the end of the file.
        0 => (8, bytes.len() as u64),
        1 => (16, r.u64().map_err(short)?),
        n => (8, u64::from(n)),
    };
    if size < header || size > bytes.len() as u64 {
        return Err(format!(
            "box {:?} claims {size} bytes, {} are left",
            String::from_utf8_lossy(&kind),
            bytes.len()
        ));
    }
    let size = size as usize;
    Ok(Some((kind, &bytes[header as usize..size], &bytes[size..])))
}

/// Big-endian reads that fail instead of panicking at the end of the data.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a box is cut off".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u24(&mut self) -> Result<u32, String> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::imageops;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut b = vec![version];
        b.extend_from_slice(&flags.to_be_bytes()[1..]);
        b.extend_from_slice(body);
        boxed(kind, &b)
    }

    /// A HEIF header with one primary item (id 1) and the given properties, no image data.
    pub(crate) fn header(brand: &[u8; 4], properties: &[Vec<u8>]) -> Vec<u8> {
        let mut ftyp = brand.to_vec();
        ftyp.extend_from_slice(&0u32.to_be_bytes());
        ftyp.extend_from_slice(b"mif1");
        ftyp.extend_from_slice(brand);
        let ipco = boxed(b"ipco", &properties.concat());
        let mut ipma = 1u32.to_be_bytes().to_vec(); // one entry
        ipma.extend_from_slice(&1u16.to_be_bytes()); // item 1
        ipma.push(properties.len() as u8);
        for i in 1..=properties.len() {
            ipma.push(0x80 | i as u8);
        }
        let iprp = boxed(b"iprp", &[ipco, full(b"ipma", 0, 0, &ipma)].concat());
        let meta = full(
            b"meta",
            0,
            0,
            &[full(b"pitm", 0, 0, &1u16.to_be_bytes()), iprp].concat(),
        );
        [boxed(b"ftyp", &ftyp), meta].concat()
    }

    pub(crate) fn ispe(w: u32, h: u32) -> Vec<u8> {
        full(b"ispe", 0, 0, &[w.to_be_bytes(), h.to_be_bytes()].concat())
    }

    #[test]
    fn brands_tell_heic_from_avif_from_other_iso_files() {
        assert_eq!(sniff(&header(b"heic", &[])), Some(Ok(Family::Heic)));
        assert_eq!(sniff(&header(b"avif", &[])), Some(Ok(Family::Avif)));
        let mp4 = boxed(b"ftyp", b"isom\0\0\0\0isomiso2");
        assert!(matches!(sniff(&mp4), Some(Err(ref m)) if m.contains("\"isom\"")));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0 a jpeg"), None);
        assert_eq!(sniff(b""), None);
        // Cut inside the ftyp box: still a HEIC, so its refusal says it does not decode.
        let heic = header(b"heic", &[ispe(8, 8)]);
        assert_eq!(sniff(&heic[..13]), Some(Ok(Family::Heic)));
        assert!(matches!(
            crate::decode(&heic[..13], &crate::ImageLimits::default()),
            Err(ImageError::Undecodable { format: "heic", .. })
        ));
    }

    #[test]
    fn the_primary_size_and_turns_come_from_its_properties() {
        let file = header(
            b"heic",
            &[ispe(4032, 3024), boxed(b"irot", &[3]), boxed(b"imir", &[1])],
        );
        let p = primary(&file, "heic").unwrap();
        assert_eq!(
            (p.width, p.height, p.irot, p.imir),
            (4032, 3024, 3, Some(1))
        );
        assert_eq!(p.upright_size(), (3024, 4032));
        let huge = header(b"avif", &[ispe(100_000, 100_000)]);
        assert_eq!(primary(&huge, "avif").unwrap().width, 100_000);
    }

    #[test]
    fn malformed_headers_are_undecodable_not_panics() {
        let good = header(b"heic", &[ispe(64, 48)]);
        for cut in 0..good.len() {
            let err = primary(&good[..cut], "heic").unwrap_err();
            assert!(
                matches!(err, ImageError::Undecodable { .. }),
                "{cut}: {err}"
            );
        }
        let no_size = header(b"heic", &[boxed(b"irot", &[1])]);
        assert!(
            primary(&no_size, "heic")
                .unwrap_err()
                .to_string()
                .contains("ispe")
        );
        let zero = header(b"heic", &[ispe(0, 10)]);
        assert!(
            primary(&zero, "heic")
                .unwrap_err()
                .to_string()
                .contains("0x10")
        );
    }

    #[test]
    fn exif_equivalents_match_turning_then_mirroring() {
        let img = crate::decode::tests::quadrants(6, 4);
        for irot in 0..4u8 {
            for imir in [None, Some(0u8), Some(1)] {
                // irot turns anti-clockwise; then imir 0 flips top-bottom, 1 left-right.
                let turned = match irot {
                    0 => img.clone(),
                    1 => imageops::rotate270(&img),
                    2 => imageops::rotate180(&img),
                    _ => imageops::rotate90(&img),
                };
                let want = match imir {
                    None => turned,
                    Some(0) => imageops::flip_vertical(&turned),
                    Some(_) => imageops::flip_horizontal(&turned),
                };
                let p = Primary {
                    width: 6,
                    height: 4,
                    irot,
                    imir,
                };
                let got = crate::orient(img.clone(), p.exif_orientation());
                assert_eq!(got, want, "irot {irot} imir {imir:?}");
                assert_eq!(got.dimensions(), p.upright_size());
            }
        }
    }
}
