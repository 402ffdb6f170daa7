//! Layer tars arrive plain, gzip- or zstd-compressed (the three OCI layer
//! media types); the format is detected from the first bytes, never from a
//! file name.

use std::io::{self, Cursor, Read};

use super::error::LayerError;

/// The compression of a layer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// Which compression `head` (the first bytes of a stream) announces.
pub fn detect(head: &[u8]) -> Result<Compression, LayerError> {
    if head.starts_with(GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Compression::Zstd)
    } else if head.starts_with(XZ_MAGIC) || head.starts_with(BZIP2_MAGIC) {
        Err(LayerError::Unsupported {
            what: "xz/bzip2-compressed layers".into(),
            detail: "layers must be plain, gzip or zstd tars (the OCI layer media types)".into(),
        })
    } else {
        Ok(Compression::None)
    }
}

/// Peeks at `reader` and returns a reader of the uncompressed tar.
pub fn decompress<'a>(
    reader: &'a mut dyn Read,
) -> Result<(Compression, Box<dyn Read + 'a>), LayerError> {
    let mut head = [0u8; 6];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::io("reading the layer stream", e)),
        }
    }
    let head = head[..filled].to_vec();
    let kind = detect(&head)?;
    let chained = Cursor::new(head).chain(reader);
    let out: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(chained),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(chained)
                .map_err(|e| LayerError::io("starting the zstd decoder", e))?,
        ),
    };
    Ok((kind, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(kind: Compression, data: &[u8]) -> Vec<u8> {
        match kind {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 1).unwrap(),
        }
    }

    #[test]
    fn detects_and_decodes_each_format() {
        let data = b"hello layer".repeat(100);
        for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let encoded = roundtrip(kind, &data);
            let mut src: &[u8] = &encoded;
            let (found, mut r) = decompress(&mut src).unwrap();
            assert_eq!(found, kind);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn short_and_empty_streams_are_plain() {
        let mut src: &[u8] = b"ab";
        let (kind, mut r) = decompress(&mut src).unwrap();
        assert_eq!(kind, Compression::None);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab");
        assert_eq!(detect(&[]).unwrap(), Compression::None);
    }

    #[test]
    fn refuses_xz() {
        let e = detect(XZ_MAGIC).unwrap_err();
        assert!(e.to_string().contains("xz"), "{e}");
    }
}
