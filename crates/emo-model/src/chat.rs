//! Chat templates: a model's Jinja template rendered the way Hugging Face's
//! `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` renders it, with minijinja.
//!
//! The environment mirrors transformers': `trim_blocks` and `lstrip_blocks` on, the template's final newline
//! dropped, `raise_exception(msg)` and `strftime_now(fmt)` as globals, a `tojson` filter that writes what
//! Python's `json.dumps(..., ensure_ascii=False)` writes (not Jinja's HTML-escaped one), Python string and
//! dict methods (`.strip()`, `.items()`, ...) through minijinja-contrib's pycompat, and `tools` and
//! `documents` set to none.
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::{ModelError, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others, such as `tool`).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A calendar date (proleptic Gregorian), what `strftime_now` formats when one is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    year: i32,
    month: u32,
    day: u32,
}

impl Date {
    /// A validated date; `month` is 1-12 and `day` 1 to the month's length.
    pub fn new(year: i32, month: u32, day: u32) -> Result<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(ModelError::InvalidArgument(format!("{year:04}-{month:02}-{day:02} is not a calendar date")));
        }
        Ok(Self { year, month, day })
    }

    /// Today's date in UTC, from the system clock.
    pub fn today_utc() -> Self {
        DateTime::now_utc().date
    }

    /// The year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// The month, 1-12.
    pub fn month(&self) -> u32 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(&self) -> u32 {
        self.day
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date (era-based, exact for all `i32` years we can meet).
fn days_from_civil(d: Date) -> i64 {
    let y = i64::from(d.year) - i64::from(d.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(d.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    Date { year, month, day }
}

/// A date with a time of day, what `strftime_now` formats.
#[derive(Clone, Copy, Debug)]
struct DateTime {
    date: Date,
    hour: u32,
    minute: u32,
    second: u32,
}

impl DateTime {
    fn now_utc() -> Self {
        // A clock before 1970 is a misconfigured machine; formatting the epoch beats failing the render.
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        Self { date: civil_from_days(days), hour: (rem / 3600) as u32, minute: (rem / 60 % 60) as u32, second: (rem % 60) as u32 }
    }

    /// Python's `strftime` for the directives chat templates use, in the C locale.
    fn strftime(&self, fmt: &str) -> std::result::Result<String, String> {
        const MONTHS: [&str; 12] =
            ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
        const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
        let d = self.date;
        let days = days_from_civil(d);
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = (days + 3).rem_euclid(7) as usize;
        let month = MONTHS[(d.month - 1) as usize];
        let yday = days - days_from_civil(Date { year: d.year, month: 1, day: 1 }) + 1;
        let hour12 = match self.hour % 12 {
            0 => 12,
            h => h,
        };
        let mut out = String::with_capacity(fmt.len() + 16);
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            // `%-d` (glibc): the number without padding.
            let mut spec = chars.next().ok_or("strftime_now: format ends with a lone `%`")?;
            let unpadded = spec == '-';
            if unpadded {
                spec = chars.next().ok_or("strftime_now: format ends with `%-`")?;
            }
            let num = |v: i64, width: usize| if unpadded { v.to_string() } else { format!("{v:0width$}") };
            let piece = match spec {
                'd' => num(i64::from(d.day), 2),
                'e' => format!("{:>2}", d.day),
                'm' => num(i64::from(d.month), 2),
                'Y' => d.year.to_string(),
                'y' => num(i64::from(d.year).rem_euclid(100), 2),
                'b' | 'h' => month[..3].to_string(),
                'B' => month.to_string(),
                'a' => WEEKDAYS[weekday][..3].to_string(),
                'A' => WEEKDAYS[weekday].to_string(),
                'u' => (weekday + 1).to_string(),
                'w' => ((weekday + 1) % 7).to_string(),
                'j' => num(yday, 3),
                'H' => num(i64::from(self.hour), 2),
                'I' => num(i64::from(hour12), 2),
                'M' => num(i64::from(self.minute), 2),
                'S' => num(i64::from(self.second), 2),
                'p' => if self.hour < 12 { "AM" } else { "PM" }.to_string(),
                'F' => format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
                'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
                '%' => "%".to_string(),
                other => return Err(format!("strftime_now: unsupported directive `%{other}`")),
            };
            out.push_str(&piece);
        }
        Ok(out)
    }
}

/// The error `raise_exception` raises, found again in the render error's source chain so that the
/// template author's message comes back verbatim.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`. `bos_token` and `eos_token` become the template's globals of those names (they
    /// are left undefined when `None`, as transformers leaves out unset special tokens). `strftime_now`
    /// reads the clock (UTC) until [`ChatTemplate::with_date`] fixes the date.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", py_tojson);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
        });
        if let Some(bos) = bos_token {
            env.add_global("bos_token", bos.to_string());
        }
        if let Some(eos) = eos_token {
            env.add_global("eos_token", eos.to_string());
        }
        let mut template = Self { env };
        template.set_clock(None);
        template.env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| ModelError::Template(describe(&e)))?;
        Ok(template)
    }

    /// Makes `strftime_now` format `date` (at 00:00:00) instead of the current time, so renders are
    /// reproducible.
    pub fn with_date(mut self, date: Date) -> Self {
        self.set_clock(Some(date));
        self
    }

    fn set_clock(&mut self, date: Option<Date>) {
        let fixed = date.map(|date| DateTime { date, hour: 0, minute: 0, second: 0 });
        let clock = Arc::new(move || fixed.unwrap_or_else(DateTime::now_utc));
        self.env.add_function("strftime_now", move |fmt: String| -> std::result::Result<String, Error> {
            clock().strftime(&fmt).map_err(|msg| Error::new(ErrorKind::InvalidOperation, msg))
        });
    }

    /// Renders a conversation; `add_generation_prompt` appends the template's cue for the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| ModelError::Template(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            tools => (),
            documents => (),
        };
        template.render(ctx).map_err(|e| ModelError::Template(describe(&e)))
    }
}

/// The message a template error carries: `raise_exception`'s text as given, otherwise minijinja's
/// description with the template line.
fn describe(err: &Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return raised.0.clone();
        }
        source = e.source();
    }
    err.to_string()
}

/// Options of Python's `json.dumps` that `tojson` accepts.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn py_tojson(value: Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string"))?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings"))?;
            (parts[0].clone(), parts[1].clone())
        }
        // Python drops the space after ',' when indenting, since lines end there.
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let style = JsonStyle { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(&mut out, &value, &style, 0)?;
    Ok(out)
}

fn write_json(out: &mut String, value: &Value, style: &JsonStyle, depth: usize) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let f = f64::try_from(value.clone())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json_str(out, key, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        kind => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: a value of kind {kind} is not JSON serializable")));
        }
    }
    Ok(())
}

/// A dict key as Python's json writes it: strings as they are, numbers, booleans and None as text.
fn json_key(key: &Value) -> std::result::Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".to_string(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => py_float_repr(f64::try_from(key.clone())?),
        kind => return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: keys must be str, int, float, bool or None, not {kind}"))),
    })
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for exponents -4..16, else
/// scientific with a signed two-digit exponent; json spells the non-finite values NaN/Infinity.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives Rust's shortest round-trip digits, e.g. "1.2345e6" or "-5e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let frac = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{frac}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_weekdays() {
        for z in [-800_000i64, -1, 0, 1, 19_930, 20_000, 2_932_896] {
            assert_eq!(days_from_civil(civil_from_days(z)), z);
        }
        assert_eq!(civil_from_days(0), Date { year: 1970, month: 1, day: 1 });
        let t = DateTime { date: Date::new(2024, 7, 26).unwrap(), hour: 13, minute: 5, second: 9 };
        assert_eq!(
            t.strftime("%A %a %d %b %B %Y %y %m %H:%M:%S %I%p %j %-d %e %%").unwrap(),
            "Friday Fri 26 Jul July 2024 24 07 13:05:09 01PM 208 26 26 %"
        );
        assert!(t.strftime("%Q").is_err());
        assert!(Date::new(2023, 2, 29).is_err());
        assert!(Date::new(2024, 2, 29).is_ok());
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }
}
