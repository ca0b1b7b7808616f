//! How values are written to and read from columns: states as text, unsigned numbers
//! (SQLite has only signed 64-bit integers), and header lists as one BLOB.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, Type, ValueRef};
use rusqlite::Row;

use super::{JobState, PartCounts, PartState, StoreError};

/// A list of headers, as forwarded or as answered.
pub(super) type Headers = Vec<(String, Vec<u8>)>;

/// A `u64` for a column, or [`StoreError::Invalid`] if it does not fit SQLite's `i64`.
pub(super) fn int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{value} is too large to store")))
}

/// Reads a column that holds a non-negative integer.
pub(super) fn uint(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Integer, Box::new(e)))
}

/// Reads two columns as a range.
pub(super) fn range(row: &Row<'_>, start: usize) -> rusqlite::Result<std::ops::Range<u64>> {
    Ok(uint(row, start)?..uint(row, start + 1)?)
}

/// Reads the seven count columns (`n_queued`, `n_in_flight`, `n_succeeded`, `n_failed`,
/// `n_cancelled`, `attempts`, `n_uncertain`) starting at `start`.
pub(super) fn counts(row: &Row<'_>, start: usize) -> rusqlite::Result<PartCounts> {
    Ok(PartCounts {
        queued: uint(row, start)?,
        in_flight: uint(row, start + 1)?,
        succeeded: uint(row, start + 2)?,
        failed: uint(row, start + 3)?,
        cancelled: uint(row, start + 4)?,
        attempts: uint(row, start + 5)?,
        uncertain: uint(row, start + 6)?,
    })
}

/// Encodes headers as one BLOB: for each, the name's length (u32, little-endian), the
/// name, the value's length, the value.
pub(super) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Result<Vec<u8>, StoreError> {
    let size = headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (name, value) in headers {
        for field in [name.as_bytes(), value.as_slice()] {
            let len = u32::try_from(field.len())
                .map_err(|_| StoreError::Invalid("a header is larger than 4 GiB".into()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(field);
        }
    }
    Ok(out)
}

/// Reads a column written by [`encode_headers`]; NULL reads as no headers.
pub(super) fn headers(row: &Row<'_>, idx: usize) -> rusqlite::Result<Headers> {
    let Some(blob) = row.get_ref(idx)?.as_blob_or_null()? else {
        return Ok(Vec::new());
    };
    decode_headers(blob)
        .map_err(|why| rusqlite::Error::FromSqlConversionFailure(idx, Type::Blob, why.into()))
}

/// Decodes what [`encode_headers`] wrote.
pub(super) fn decode_headers(blob: &[u8]) -> Result<Headers, &'static str> {
    let fail = |why: &'static str| why;
    let mut rest = blob;
    let mut field = || -> Option<&[u8]> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (field, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(field)
    };
    let mut out = Vec::new();
    while let Some(name) = field() {
        let value = field().ok_or_else(|| fail("a header has no value"))?;
        let name =
            String::from_utf8(name.to_vec()).map_err(|_| fail("a header name is not UTF-8"))?;
        out.push((name, value.to_vec()));
    }
    if !rest.is_empty() {
        return Err(fail("the header list is truncated"));
    }
    Ok(out)
}

// === impl PartState ===

impl PartState {
    pub(super) const ALL: [PartState; 6] = [
        Self::Queued,
        Self::InFlight,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Uncertain,
    ];

    /// The name stored in `parts.state` (the same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InFlight => "in_flight",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Uncertain => "uncertain",
        }
    }

    /// `Queued` or `InFlight`: still to be sent.
    pub(super) fn is_open(self) -> bool {
        matches!(self, Self::Queued | Self::InFlight)
    }
}

impl ToSql for PartState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for PartState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown part state {text:?}").into()))
    }
}

// === impl JobState ===

impl JobState {
    pub(super) const ALL: [JobState; 7] = [
        Self::Queued,
        Self::InProgress,
        Self::Succeeded,
        Self::PartiallyFailed,
        Self::Failed,
        Self::Cancelled,
        Self::Uncertain,
    ];

    /// The state named as in JSON (`in_progress`…), if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name stored in `jobs.state` (the same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::PartiallyFailed => "partially_failed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Uncertain => "uncertain",
        }
    }
}

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for JobState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown job state {text:?}").into()))
    }
}

// === impl PartCounts ===

impl PartCounts {
    /// The count for one state.
    pub(super) fn get_mut(&mut self, state: PartState) -> &mut u64 {
        match state {
            PartState::Queued => &mut self.queued,
            PartState::InFlight => &mut self.in_flight,
            PartState::Succeeded => &mut self.succeeded,
            PartState::Failed => &mut self.failed,
            PartState::Cancelled => &mut self.cancelled,
            PartState::Uncertain => &mut self.uncertain,
        }
    }

    /// Moves `n` parts from one state to another.
    pub(super) fn shift(&mut self, from: PartState, to: PartState, n: u64) {
        let from = self.get_mut(from);
        *from = from.saturating_sub(n);
        *self.get_mut(to) += n;
    }
}
