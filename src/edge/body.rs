//! Reading a client's request body whole, up to a limit, and undoing its
//! `Content-Encoding`.
//!
//! Sends and template creations are read whole (a send is stored; a template is checked),
//! and clients may compress them: `gzip` (also `x-gzip`) and `deflate` (zlib, or the raw
//! deflate some clients send under that name) are decoded, stacked codings in reverse
//! order, `identity` is nothing to do. The limit (`server.max_body_bytes`) applies to the
//! body as sent **and** to the decoded body, so a small compressed body that inflates past
//! the limit (a decompression bomb) is refused with the same 413, having decoded at most
//! one byte more than the limit. Any other coding (`br`, `zstd`…) is refused with a 415
//! before the body is read. Pass-through bodies never come here: they are forwarded as
//! sent, compressed or not.

use std::io::Read;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};

use crate::error::ProxyError;

/// A content coding sluice can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
}

/// Bodies smaller than this are decoded on the calling task; larger ones on tokio's
/// blocking pool, so inflating a large body does not stall other requests.
const INLINE_DECODE: usize = 64 * 1024;

/// Reads the whole body, refusing more than `max` bytes with a 413.
pub async fn read(body: Body, max: u64) -> Result<Bytes, ProxyError> {
    if body.size_hint().exact().is_some_and(|n| n > max) {
        return Err(ProxyError::BodyTooLarge { limit: max });
    }
    match Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit: max })
        }
        Err(e) => Err(ProxyError::client_body(e.as_ref())),
    }
}

/// Reads the whole body and undoes its `Content-Encoding`: the result is the body as the
/// client meant it, at most `max` bytes before and after decoding. When something was
/// decoded, `Content-Encoding` and `Content-Length` are removed from `headers`, which then
/// describe the decoded body.
pub async fn read_decoded(
    headers: &mut HeaderMap,
    body: Body,
    max: u64,
) -> Result<Bytes, ProxyError> {
    let codings = codings(headers)?;
    let raw = read(body, max).await?;
    if codings.is_empty() {
        headers.remove(header::CONTENT_ENCODING);
        return Ok(raw);
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    if raw.len() < INLINE_DECODE {
        return decode(raw, &codings, max);
    }
    tokio::task::spawn_blocking(move || decode(raw, &codings, max))
        .await
        .map_err(|e| ProxyError::ClientBody {
            detail: format!("decoding was interrupted: {e}"),
        })?
}

/// The codings to undo, in the order they were applied; `identity` is left out. An
/// unknown coding is a 415.
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, ProxyError> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let unsupported = || ProxyError::UnsupportedEncoding {
            encoding: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        let text = value.to_str().map_err(|_| unsupported())?;
        for name in text.split(',').map(str::trim) {
            match name.to_ascii_lowercase().as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" => out.push(Coding::Gzip),
                "deflate" => out.push(Coding::Deflate),
                _ => {
                    return Err(ProxyError::UnsupportedEncoding {
                        encoding: name.to_string(),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Undoes `codings` (last applied first), refusing a result over `max` bytes.
fn decode(mut body: Bytes, codings: &[Coding], max: u64) -> Result<Bytes, ProxyError> {
    for &coding in codings.iter().rev() {
        let mut out = Vec::new();
        let limit = max.saturating_add(1);
        let read = match coding {
            Coding::Gzip => flate2::read::MultiGzDecoder::new(&body[..])
                .take(limit)
                .read_to_end(&mut out),
            // RFC 9110 says zlib; some clients send raw deflate under the same name.
            Coding::Deflate if is_zlib(&body) => flate2::read::ZlibDecoder::new(&body[..])
                .take(limit)
                .read_to_end(&mut out),
            Coding::Deflate => flate2::read::DeflateDecoder::new(&body[..])
                .take(limit)
                .read_to_end(&mut out),
        };
        read.map_err(|e| ProxyError::BadEncoding {
            encoding: coding.name(),
            detail: e.to_string(),
        })?;
        if out.len() as u64 > max {
            return Err(ProxyError::BodyTooLarge { limit: max });
        }
        body = Bytes::from(out);
    }
    Ok(body)
}

/// Whether `data` starts with a zlib header (RFC 1950: method 8, a valid check value).
fn is_zlib(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

// === impl Coding ===

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use http::{HeaderValue, StatusCode};

    use super::*;

    const BODY: &[u8] = br#"{"recipients":["38970123456","38970123457"]}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn decoded(
        encoding: Option<&str>,
        body: Vec<u8>,
        max: u64,
    ) -> (HeaderMap, Result<Bytes, ProxyError>) {
        let mut headers = HeaderMap::new();
        if let Some(e) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_str(e).unwrap());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let result = read_decoded(&mut headers, Body::from(body), max).await;
        (headers, result)
    }

    #[tokio::test]
    async fn gzip_and_both_deflates_are_undone_and_the_headers_follow() {
        for (encoding, body) in [
            ("gzip", gzip(BODY)),
            ("X-Gzip", gzip(BODY)),
            ("deflate", zlib(BODY)),
            ("deflate", raw_deflate(BODY)),
            ("gzip, identity", gzip(BODY)),
            ("deflate, gzip", gzip(&zlib(BODY))),
        ] {
            let (headers, result) = decoded(Some(encoding), body, 1024).await;
            assert_eq!(result.expect(encoding), BODY, "{encoding}");
            assert!(
                headers.get(header::CONTENT_ENCODING).is_none(),
                "{encoding}"
            );
            assert!(headers.get(header::CONTENT_LENGTH).is_none(), "{encoding}");
        }
        // Nothing to undo: the body and its length stay as sent.
        for encoding in [None, Some("identity")] {
            let (headers, result) = decoded(encoding, BODY.to_vec(), 1024).await;
            assert_eq!(result.unwrap(), BODY);
            assert!(headers.get(header::CONTENT_LENGTH).is_some());
            assert!(headers.get(header::CONTENT_ENCODING).is_none());
        }
    }

    #[tokio::test]
    async fn a_body_that_inflates_past_the_limit_is_a_413() {
        let bomb = gzip(&vec![b' '; 1_000_000]);
        assert!(bomb.len() < 10_000, "{}", bomb.len());
        let (_, result) = decoded(Some("gzip"), bomb.clone(), 100_000).await;
        let err = result.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE, "{err}");
        // Exactly at the limit is fine.
        let (_, result) = decoded(Some("gzip"), bomb, 1_000_000).await;
        assert_eq!(result.unwrap().len(), 1_000_000);
        // The body as sent counts too.
        let (_, result) = decoded(Some("gzip"), gzip(BODY), 10).await;
        assert_eq!(result.unwrap_err().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn unknown_codings_are_415_and_broken_data_a_400() {
        for encoding in ["br", "zstd", "gzip, br", "compress"] {
            let (_, result) = decoded(Some(encoding), BODY.to_vec(), 1024).await;
            let err = result.unwrap_err();
            assert_eq!(
                err.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{encoding}"
            );
            assert!(err.to_string().contains("gzip"), "{err}");
        }
        for encoding in ["gzip", "deflate"] {
            let (_, result) = decoded(Some(encoding), BODY.to_vec(), 1024).await;
            let err = result.unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{encoding}: {err}");
            assert!(err.to_string().contains(encoding), "{err}");
        }
    }

    #[test]
    fn zlib_headers_are_told_from_raw_deflate() {
        assert!(is_zlib(&zlib(BODY)));
        assert!(!is_zlib(&raw_deflate(BODY)));
        assert!(!is_zlib(b"x"));
    }
}
