//! API keys: where the proxy's own key comes from, how client keys are cleaned, and how
//! a key is named in logs, metrics and maps without ever being shown.
//!
//! A key is a credential for a whole company, so it only ever appears in the one header
//! that carries it upstream. Everywhere else (cooldown maps, metric labels, job
//! ownership) the proxy uses a [`KeyId`]: a SHA-256 fingerprint of the key.

use std::fmt;
use std::path::Path;

use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// The header that carries the key, as the API names it.
pub const HEADER: &str = "x-api-key";

/// A key the proxy holds (from `SLUICE_API_KEY` or a key file). `Debug` shows only the
/// fingerprint.
#[derive(Clone)]
pub struct ApiKey {
    value: HeaderValue,
    id: KeyId,
}

/// A stable, non-reversible name for a key: SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

/// What [`resolve`] did to a request's key header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The key the request goes upstream with, if any.
    pub id: Option<KeyId>,
    /// The client's key had surrounding white space, which was removed.
    pub trimmed: bool,
    /// The client sent no (or a blank) key and the proxy's own was put in.
    pub injected: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the API key from {origin} is empty or not a valid header value")]
    Invalid { origin: &'static str },
}

// === impl ApiKey ===

impl ApiKey {
    /// Loads the proxy's key: `env` (the value of `SLUICE_API_KEY`) wins over `file`.
    pub fn load(env: Option<String>, file: Option<&Path>) -> Result<Option<Self>, KeyError> {
        if let Some(value) = env.filter(|v| !v.is_empty()) {
            return Self::parse(value.as_bytes(), "SLUICE_API_KEY").map(Some);
        }
        let Some(path) = file else { return Ok(None) };
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes, "the key file").map(Some)
    }

    fn parse(bytes: &[u8], origin: &'static str) -> Result<Self, KeyError> {
        let trimmed = bytes.trim_ascii();
        let mut value = HeaderValue::from_bytes(trimmed)
            .ok()
            .filter(|_| !trimmed.is_empty())
            .ok_or(KeyError::Invalid { origin })?;
        value.set_sensitive(true);
        Ok(Self {
            id: KeyId::of(trimmed),
            value,
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key as a header value (marked sensitive), to send upstream.
    pub fn header_value(&self) -> HeaderValue {
        self.value.clone()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.id)
    }
}

// === impl KeyId ===

impl KeyId {
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// [`of`](Self::of), remembered: each thread keeps the fingerprints of the last
    /// [`RECENT_KEYS`] keys it saw (of at most [`RECENT_KEY_LEN`] bytes), since a proxy sees
    /// the same few keys on every request.
    pub fn of_recent(key: &[u8]) -> Self {
        if key.len() > RECENT_KEY_LEN {
            return Self::of(key);
        }
        RECENT.with(|cell| {
            let Ok(mut recent) = cell.try_borrow_mut() else {
                return Self::of(key);
            };
            if let Some((_, id)) = recent.keys.iter().find(|(k, _)| same(k, key)) {
                return *id;
            }
            let id = Self::of(key);
            let entry = (Box::<[u8]>::from(key), id);
            if recent.keys.len() < RECENT_KEYS {
                recent.keys.push(entry);
            } else {
                let next = recent.next;
                recent.keys[next] = entry;
                recent.next = (next + 1) % RECENT_KEYS;
            }
            id
        })
    }

    /// Short form for metric labels and logs: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// Full form, for storing ownership.
    pub fn full(&self) -> String {
        hex(&self.0)
    }

    /// The key id whose [`full`](Self::full) form is `text`, if it is one.
    pub fn from_full(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(out))
    }
}

/// How many recent keys each thread remembers the fingerprint of, and their longest length.
const RECENT_KEYS: usize = 16;
const RECENT_KEY_LEN: usize = 256;

/// A thread's recent keys and their fingerprints; the oldest is replaced first.
#[derive(Default)]
struct Recent {
    keys: Vec<(Box<[u8]>, KeyId)>,
    next: usize,
}

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = std::cell::RefCell::new(Recent::default());
}

/// Equal bytes, in a time that depends on the lengths only (keys are secrets).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fp:{}", self.short())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True when a request will go upstream with some key: the client's (not blank) or, when
/// it sent none, `own`. [`resolve`] without changing anything.
pub fn present(headers: &HeaderMap, own: Option<&ApiKey>) -> bool {
    own.is_some()
        || headers
            .get(HEADER)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
}

/// Cleans the key header of an outgoing request in place: trims surrounding white space
/// (the API refuses padded keys), drops a blank one, and injects `own` when the client
/// sent none. Every value left is marked sensitive so `Debug` output hides it.
pub fn resolve(headers: &mut HeaderMap, own: Option<&ApiKey>) -> Resolution {
    let mut res = Resolution {
        id: None,
        trimmed: false,
        injected: false,
    };
    if let Some(value) = headers.get(HEADER) {
        let raw = value.as_bytes();
        let clean = raw.trim_ascii();
        if clean.is_empty() {
            headers.remove(HEADER);
        } else {
            res.id = Some(KeyId::of_recent(clean));
            if clean.len() != raw.len() {
                res.trimmed = true;
                // A sub-slice of a valid header value is a valid header value.
                if let Ok(v) = HeaderValue::from_bytes(clean) {
                    headers.insert(HEADER, v);
                }
            }
        }
    }
    if res.id.is_none() {
        if let Some(own) = own {
            headers.insert(HEADER, own.value.clone());
            res.id = Some(own.id);
            res.injected = true;
        }
    }
    if let Some(v) = headers.get_mut(HEADER) {
        v.set_sensitive(true);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> ApiKey {
        ApiKey::parse(v.as_bytes(), "test").unwrap()
    }

    #[test]
    fn padded_client_key_is_trimmed_and_counted() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("  abc \t"));
        let r = resolve(&mut h, None);
        assert!(r.trimmed && !r.injected);
        assert_eq!(h[HEADER], "abc");
        assert_eq!(r.id, Some(KeyId::of(b"abc")));
    }

    #[test]
    fn own_key_injected_only_when_client_sends_none_or_blank() {
        let own = key("\nsecret\n");
        let mut h = HeaderMap::new();
        let r = resolve(&mut h, Some(&own));
        assert!(r.injected);
        assert_eq!(h[HEADER], "secret");

        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("   "));
        assert!(resolve(&mut h, Some(&own)).injected);

        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("client"));
        let r = resolve(&mut h, Some(&own));
        assert!(!r.injected);
        assert_eq!(h[HEADER], "client");
    }

    #[test]
    fn blank_key_without_own_key_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static(" "));
        let r = resolve(&mut h, None);
        assert_eq!(r.id, None);
        assert!(h.get(HEADER).is_none());
    }

    #[test]
    fn the_full_form_reads_back() {
        let id = KeyId::of(b"secret");
        assert_eq!(KeyId::from_full(&id.full()), Some(id));
        assert_eq!(KeyId::from_full("abc"), None);
        assert_eq!(KeyId::from_full(&"zz".repeat(32)), None);
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let k = key("very-secret-key");
        let shown = format!("{k:?} {} {:?}", k.id(), k.id());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(k.id().short().len(), 8);
    }

    #[test]
    fn env_wins_over_file_and_empty_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-key-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let k = ApiKey::load(Some("from-env".into()), Some(&dir))
            .unwrap()
            .unwrap();
        assert_eq!(k.id(), KeyId::of(b"from-env"));
        let k = ApiKey::load(None, Some(&dir)).unwrap().unwrap();
        assert_eq!(k.id(), KeyId::of(b"from-file"));
        std::fs::write(&dir, "  \n").unwrap();
        assert!(ApiKey::load(None, Some(&dir)).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(ApiKey::load(None, None).unwrap().is_none());
    }

    #[test]
    fn remembered_fingerprints_are_the_fingerprints() {
        for round in 0..3 {
            for i in 0..40 {
                let key = format!("key-{i}");
                assert_eq!(
                    KeyId::of_recent(key.as_bytes()),
                    KeyId::of(key.as_bytes()),
                    "{round}"
                );
            }
        }
        let long = vec![b'k'; 1000];
        assert_eq!(KeyId::of_recent(&long), KeyId::of(&long));
        assert!(!same(b"abc", b"abd") && same(b"abc", b"abc") && !same(b"ab", b"abc"));
    }
}
