//! Logging: one JSON object per line (or text for people), with a filter that SIGHUP can
//! change while running.
//!
//! Every JSON line is flat: `timestamp`, `level`, `message`, the event's own fields, then the
//! fields of the spans it happened in (the request's `request_id` among them) and `target`.
//! So `request_id` is always a top-level field, whether an event names it or inherits it
//! from the request's span, and one `jq 'select(.request_id == "…")'` follows a request.
//! Text logs are coloured only when stdout is a terminal, so files never get ANSI codes.
//!
//! The JSON line is written straight from the event's fields into one buffer (no JSON tree
//! is built per line): this runs twice per proxied request, so it is on the hot path.
//! Lines reach stdout through a spool ([`Spool`]): the thread that logs copies its line
//! into a shared buffer and goes on; one writer thread writes what has gathered, many
//! lines to a system call under load. [`flush`] waits for the spool to be written out.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
#[cfg(test)]
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// Changes the log filter while running (on SIGHUP).
pub type Handle = reload::Handle<EnvFilter, Registry>;

/// The flat JSON line format (see the module documentation). It reads span fields recorded
/// by [`FlatFields`] (cheap) or by tracing-subscriber's `JsonFields` (parsed per line).
pub struct FlatJson;

/// Records span fields for [`FlatJson`]: one `name` TAB `JSON value` entry a line, so that
/// an event can copy them without parsing JSON.
pub struct FlatFields;

/// Logs to stdout in `format` at `level` (`RUST_LOG` wins); returns the filter's handle.
pub fn init(format: LogFormat, level: &str) -> Handle {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    SPOOL.start();
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(FlatFields)
                    .event_format(FlatJson)
                    .with_writer(&SPOOL),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(&SPOOL),
            )
            .init(),
    }
    handle
}

/// Waits (a few seconds at most) until every line logged so far is written to stdout; for
/// the end of the process, whose exit would drop what the spool still holds.
pub fn flush() {
    SPOOL.flush(Duration::from_secs(5));
}

/// Lines on their way to stdout (see the module documentation). A logging thread waits only
/// when [`MAX_SPOOLED`] bytes are already waiting, as it would for a slow stdout anyway.
pub struct Spool {
    pending: Mutex<Pending>,
    /// Wakes the writer thread when lines arrive.
    arrived: Condvar,
    /// Wakes those waiting for room or for everything to be written.
    written: Condvar,
    writer: Once,
    /// No writer thread: lines go straight to stdout.
    direct: AtomicBool,
}

struct Pending {
    lines: Vec<u8>,
    /// The writer thread is writing a batch.
    writing: bool,
}

/// Most bytes spooled before logging threads wait for the writer.
const MAX_SPOOLED: usize = 4 << 20;
/// How long the writer lets lines gather once woken, unless this many bytes already wait.
const GATHER: Duration = Duration::from_millis(5);
const GATHER_BYTES: usize = 64 << 10;

static SPOOL: Spool = Spool {
    pending: Mutex::new(Pending {
        lines: Vec::new(),
        writing: false,
    }),
    arrived: Condvar::new(),
    written: Condvar::new(),
    writer: Once::new(),
    direct: AtomicBool::new(false),
};

/// What a logging thread writes its line to (once per line: the fmt layer writes a whole
/// line with one `write_all`).
pub struct SpoolWriter(&'static Spool);

// === impl Spool ===

impl Spool {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the writer thread (once).
    fn start(&'static self) {
        self.writer.call_once(|| {
            let started = std::thread::Builder::new()
                .name("sluice-log".into())
                .spawn(move || self.write_out());
            if let Err(e) = started {
                eprintln!("sluice: cannot start the log writer ({e}); logging directly");
                self.direct.store(true, Ordering::Relaxed);
            }
        });
    }

    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        while pending.lines.len() >= MAX_SPOOLED {
            pending = self
                .written
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // The writer sleeps only on an empty spool, so only the first line wakes it.
        let was_empty = pending.lines.is_empty() && !pending.writing;
        pending.lines.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.arrived.notify_one();
        }
    }

    /// The writer thread: takes what has gathered, writes it, and again.
    fn write_out(&self) {
        let mut batch = Vec::new();
        loop {
            let mut pending = self.lock();
            pending.writing = false;
            self.written.notify_all();
            while pending.lines.is_empty() {
                pending = self
                    .arrived
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Woken by the first line after a quiet spell: let the lines logged meanwhile
            // gather for a moment, so that under load one wake-up and one write carry
            // hundreds of lines instead of one each.
            if pending.lines.len() < GATHER_BYTES {
                drop(pending);
                std::thread::sleep(GATHER);
                pending = self.lock();
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.writing = true;
            drop(pending);
            self.written.notify_all();
            let mut out = std::io::stdout().lock();
            // Nowhere to report a failed log write; the lines are dropped like the
            // direct writer's would be.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            drop(out);
            if batch.capacity() > MAX_SPOOLED {
                batch = Vec::new();
            }
            batch.clear();
        }
    }

    fn flush(&self, at_most: Duration) {
        let pending = self.lock();
        let _ = self
            .written
            .wait_timeout_while(pending, at_most, |p| !p.lines.is_empty() || p.writing);
    }
}

impl<'a> MakeWriter<'a> for &'static Spool {
    type Writer = SpoolWriter;

    fn make_writer(&'a self) -> SpoolWriter {
        SpoolWriter(self)
    }
}

impl std::io::Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.direct.load(Ordering::Relaxed) {
            return std::io::stdout().write(buf);
        }
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One line being put together: every key and value (values already JSON) in `text`, the
/// entries as ranges into it, in the order they were first put.
#[derive(Default)]
struct Line {
    text: String,
    entries: Vec<(Range<usize>, Range<usize>)>,
    /// A bit per key put so far (see [`key_bit`]): most keys are new, and this says so
    /// without comparing them with every key put before.
    seen: u64,
    scratch: String,
}

/// A key's bit in [`Line::seen`].
fn key_bit(key: &str) -> u64 {
    let b = key.as_bytes();
    let h = b.len()
        ^ usize::from(b.first().copied().unwrap_or(0)) << 2
        ^ usize::from(b.last().copied().unwrap_or(0)) << 1;
    1 << (h % 64)
}

thread_local! {
    static LINE: RefCell<Line> = RefCell::new(Line::default());
}

// === impl Line ===

impl Line {
    fn clear(&mut self) {
        self.text.clear();
        self.entries.clear();
        self.seen = 0;
    }

    fn key(&self, i: usize) -> &str {
        &self.text[self.entries[i].0.clone()]
    }

    fn find(&self, key: &str) -> Option<usize> {
        (0..self.entries.len()).find(|&i| self.key(i) == key)
    }

    /// Adds `key` with the JSON value `write` appends; replaces an earlier value (a map's
    /// `insert`) unless `keep_first` (a map's `entry().or_insert()`).
    fn put(&mut self, key: &str, keep_first: bool, write: impl FnOnce(&mut String)) {
        let bit = key_bit(key);
        let existing = if self.seen & bit == 0 {
            self.seen |= bit;
            None
        } else {
            self.find(key)
        };
        if keep_first && existing.is_some() {
            return;
        }
        let k = self.text.len();
        self.text.push_str(key);
        let v = self.text.len();
        write(&mut self.text);
        let entry = (k..v, v..self.text.len());
        match existing {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
    }

    fn put_str(&mut self, key: &str, keep_first: bool, value: &str) {
        self.put(key, keep_first, |out| json_str(out, value));
    }

    /// Writes the line as a JSON object and a newline.
    fn finish(&mut self, writer: &mut Writer<'_>) -> fmt::Result {
        let text = &self.text;
        let out = &mut self.scratch;
        out.clear();
        out.push('{');
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(out, &text[k.clone()]);
            out.push(':');
            out.push_str(&text[v.clone()]);
        }
        out.push_str("}\n");
        writer.write_str(out)
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it: `"`, `\` and
/// control characters; `\b \f \n \r \t` short, the others as `\u00XX`.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    if bytes.iter().all(plain) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends a number as serde_json writes it (non-finite floats as `null`).
fn json_f64(out: &mut String, value: f64) {
    out.push_str(&Value::from(value).to_string());
}

// === impl FlatJson ===

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => format_line(&mut line, ctx, &mut writer, event),
            // Formatting a field logged something itself: a line of its own.
            Err(_) => format_line(&mut Line::default(), ctx, &mut writer, event),
        })
    }
}

fn format_line<S, N>(
    line: &mut Line,
    ctx: &FmtContext<'_, S, N>,
    writer: &mut Writer<'_>,
    event: &Event<'_>,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let meta = event.metadata();
    line.clear();
    line.put("timestamp", false, |out| {
        out.push('"');
        let _ = write!(
            out,
            "{}",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        );
        out.push('"');
    });
    line.put_str("level", false, meta.level().as_str());
    event.record(&mut Fields(line));
    // The spans' fields, innermost first; what the event says itself wins.
    if let Some(scope) = ctx.event_scope() {
        for span in scope {
            let extensions = span.extensions();
            let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                continue;
            };
            copy_span_fields(line, fields);
        }
    }
    line.put_str("target", false, meta.target());
    line.finish(writer)
}

/// Adds a span's recorded fields that the line does not have yet.
fn copy_span_fields(line: &mut Line, fields: &str) {
    if fields.starts_with('{') {
        // Recorded by `JsonFields`: one JSON object.
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
            for (name, value) in map {
                line.put(&name, true, |out| out.push_str(&value.to_string()));
            }
        }
        return;
    }
    for entry in fields.split_terminator('\n') {
        if let Some(tab) = entry.bytes().position(|b| b == b'\t') {
            let (name, value) = (&entry[..tab], &entry[tab + 1..]);
            line.put(name, true, |out| out.push_str(value));
        }
    }
}

/// Records an event's fields into a [`Line`].
struct Fields<'a>(&'a mut Line);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.put_str(field.name(), false, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.put(field.name(), false, |out| {
            let _ = write!(out, "{value}");
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.put(field.name(), false, |out| {
            let _ = write!(out, "{value}");
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.put(field.name(), false, |out| json_f64(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.put(field.name(), false, |out| {
            out.push_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = std::mem::take(&mut self.0.scratch);
        text.clear();
        let _ = write!(text, "{value:?}");
        self.0.put_str(field.name(), false, &text);
        self.0.scratch = text;
    }
}

// === impl FlatFields ===

impl<'writer> FormatFields<'writer> for FlatFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = SpanFields { out: String::new() };
        fields.record(&mut visitor);
        writer.write_str(&visitor.out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut visitor = SpanFields { out: String::new() };
        fields.record(&mut visitor);
        // A field recorded again replaces its earlier value.
        let mut kept = String::with_capacity(current.fields.len() + visitor.out.len());
        for entry in current.fields.lines() {
            let name = entry.split_once('\t').map_or(entry, |(n, _)| n);
            if !visitor
                .out
                .lines()
                .any(|e| e.split_once('\t').map(|(n, _)| n) == Some(name))
            {
                kept.push_str(entry);
                kept.push('\n');
            }
        }
        kept.push_str(&visitor.out);
        current.fields = kept;
        Ok(())
    }
}

/// Records span fields as `name` TAB `JSON value` lines (JSON never holds a raw newline).
struct SpanFields {
    out: String,
}

impl SpanFields {
    fn entry(&mut self, field: &Field, write: impl FnOnce(&mut String)) {
        self.out.push_str(field.name());
        self.out.push('\t');
        write(&mut self.out);
        self.out.push('\n');
    }
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| json_str(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| {
            let _ = write!(out, "{value}");
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| {
            let _ = write!(out, "{value}");
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| json_f64(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.push_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.entry(field, |out| json_str(out, &text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_id_is_top_level_whether_inherited_or_named() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc");
            let _in = span.enter();
            tracing::info!(job = "j1", attempt = 2, "inherits it");
            tracing::warn!(request_id = "xyz", "names its own");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["request_id"], "abc", "{text}");
        assert_eq!(lines[0]["message"], "inherits it");
        assert_eq!(lines[0]["attempt"], 2);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[1]["request_id"], "xyz", "the event's own value wins");
        assert!(!text.contains('\u{1b}'), "no ANSI codes");
    }

    /// The line from `FlatFields` span records is the one a JSON tree gave, byte for byte.
    #[test]
    fn flat_fields_give_the_same_line_as_json_fields() {
        fn lines<N>(fields: N) -> Vec<Value>
        where
            N: for<'a> FormatFields<'a> + Send + Sync + 'static,
        {
            let buffer = Buffer::default();
            let out = buffer.clone();
            let subscriber = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(fields)
                    .event_format(FlatJson)
                    .with_writer(move || out.clone()),
            );
            tracing::subscriber::with_default(subscriber, || {
                let outer =
                    tracing::info_span!("outer", zone = "o", n = 1u64, request_id = "outer");
                let _o = outer.enter();
                let span = tracing::info_span!("request", request_id = %"a\"b\\c\u{1}\t", f = 1.5f64, ok = true, late = tracing::field::Empty);
                span.record("late", -7i64);
                let _in = span.enter();
                tracing::info!(method = %"GET", odd = "é\u{7f}\n\r\u{8}\u{c}", x = f64::NAN, big = 1e300, neg = -3i64, "client \"request\"");
                tracing::warn!(zone = "event", target_like = ?Some("x"), "names its own");
            });
            let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| {
                    assert!(l.starts_with("{\"timestamp\":"), "{l}");
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("timestamp");
                    v
                })
                .collect()
        }
        let flat = lines(FlatFields);
        let json = lines(JsonFields::new());
        assert_eq!(flat, json);
        assert_eq!(flat.len(), 2);
        assert_eq!(flat[0]["request_id"], "a\"b\\c\u{1}\t");
        assert_eq!(flat[0]["zone"], "o");
        assert_eq!(flat[1]["zone"], "event");
        assert_eq!(flat[0]["x"], Value::Null);
        assert_eq!(flat[0]["late"], -7);
    }
}
