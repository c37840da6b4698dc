//! JSON ⇄ PostgreSQL values for the query API.
//!
//! Parameters are bound by the statement's own parameter types, never interpolated: each JSON
//! value is checked against its parameter's type and sent in PostgreSQL's text format, so the
//! server's own input functions parse numerics, dates, UUIDs and arrays exactly. Results arrive
//! in binary and are mapped to JSON: integers and floats as numbers, numeric as a string (no
//! precision lost), times in ISO 8601, bytea in base64, json/jsonb embedded, arrays as arrays.

use std::error::Error;
use std::fmt::Write as _;

use base64::Engine as _;
use postgres_protocol::types as pgt;
use serde_json::{Number, Value};
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type};

type BoxError = Box<dyn Error + Sync + Send>;

/// Whether results of this type can be returned as JSON.
pub fn supported(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(member) => supported(member),
        Kind::Domain(inner) => supported(inner),
        _ => {
            matches!(
                *ty,
                Type::BOOL
                    | Type::INT2
                    | Type::INT4
                    | Type::INT8
                    | Type::OID
                    | Type::FLOAT4
                    | Type::FLOAT8
                    | Type::NUMERIC
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::UNKNOWN
                    | Type::JSON
                    | Type::JSONB
                    | Type::UUID
                    | Type::DATE
                    | Type::TIME
                    | Type::TIMESTAMP
                    | Type::TIMESTAMPTZ
                    | Type::INTERVAL
                    | Type::BYTEA
                    | Type::INET
                    | Type::CIDR
                    | Type::VOID
            ) || matches!(ty.kind(), Kind::Enum(_))
        }
    }
}

/// One result cell as JSON.
pub struct Cell(pub Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw).map(Cell)
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Cell(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        supported(ty)
    }
}

fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    if let Kind::Array(member) = ty.kind() {
        let array = pgt::array_from_sql(raw)?;
        let dims: Vec<i32> = {
            use fallible_iterator::FallibleIterator;
            array.dimensions().map(|d| Ok(d.len)).collect()?
        };
        let values: Vec<Value> = {
            use fallible_iterator::FallibleIterator;
            array
                .values()
                .map(|v| match v {
                    Some(bytes) => decode(member, bytes),
                    None => Ok(Value::Null),
                })
                .collect()?
        };
        return Ok(nest(&dims, &mut values.into_iter()));
    }
    if let Kind::Domain(inner) = ty.kind() {
        return decode(inner, raw);
    }
    if let Kind::Enum(_) = ty.kind() {
        return Ok(Value::String(pgt::text_from_sql(raw)?.to_string()));
    }
    Ok(match *ty {
        Type::VOID => Value::Null,
        Type::BOOL => Value::Bool(pgt::bool_from_sql(raw)?),
        Type::INT2 => pgt::int2_from_sql(raw)?.into(),
        Type::INT4 => pgt::int4_from_sql(raw)?.into(),
        Type::INT8 => pgt::int8_from_sql(raw)?.into(),
        Type::OID => pgt::oid_from_sql(raw)?.into(),
        Type::FLOAT4 => float(pgt::float4_from_sql(raw)? as f64),
        Type::FLOAT8 => float(pgt::float8_from_sql(raw)?),
        Type::NUMERIC => Value::String(numeric(raw)?),
        Type::JSON => serde_json::from_slice(raw)?,
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => serde_json::from_slice(rest)?,
            _ => return Err("unsupported jsonb version".into()),
        },
        Type::UUID => Value::String(uuid(&pgt::uuid_from_sql(raw)?)),
        Type::DATE => Value::String(date(pgt::date_from_sql(raw)?)),
        Type::TIME => Value::String(time_of_day(pgt::time_from_sql(raw)?)),
        Type::TIMESTAMP => Value::String(timestamp(pgt::timestamp_from_sql(raw)?, false)),
        Type::TIMESTAMPTZ => Value::String(timestamp(pgt::timestamp_from_sql(raw)?, true)),
        Type::INTERVAL => Value::String(interval(raw)?),
        Type::BYTEA => Value::String(
            base64::engine::general_purpose::STANDARD.encode(pgt::bytea_from_sql(raw)),
        ),
        Type::INET | Type::CIDR => {
            let inet = pgt::inet_from_sql(raw)?;
            let full = if inet.addr().is_ipv4() { 32 } else { 128 };
            if *ty == Type::INET && inet.netmask() == full {
                Value::String(inet.addr().to_string())
            } else {
                Value::String(format!("{}/{}", inet.addr(), inet.netmask()))
            }
        }
        // Text-like types.
        _ => Value::String(pgt::text_from_sql(raw)?.to_string()),
    })
}

/// Rebuilds a multi-dimensional array from its flat values.
fn nest(dims: &[i32], values: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => Value::Array(vec![]),
        Some((&n, [])) => Value::Array(values.take(n.max(0) as usize).collect()),
        Some((&n, rest)) => Value::Array((0..n.max(0)).map(|_| nest(rest, values)).collect()),
    }
}

fn numeric(raw: &[u8]) -> Result<String, BoxError> {
    let field = |i: usize| -> Result<i16, BoxError> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric too short".into())
    };
    let ndigits = field(0)? as usize;
    let weight = field(2)? as i32;
    let sign = field(4)? as u16;
    let dscale = field(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| field(8 + 2 * i))
        .collect::<Result<_, _>>()?;
    let digit = |i: i32| -> i16 {
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                write!(out, "{}", digit(i))?;
            } else {
                write!(out, "{:04}", digit(i))?;
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            write!(frac, "{:04}", digit(i))?;
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

fn uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// PostgreSQL counts from 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn ymd(days_since_2000: i64) -> String {
    let (y, m, d) = civil(days_since_2000 + PG_EPOCH_DAYS);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => ymd(d as i64),
    }
}

fn hms(micros: i64) -> String {
    let (secs, us) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if us == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        let frac = format!("{us:06}");
        format!("{h:02}:{m:02}:{s:02}.{}", frac.trim_end_matches('0'))
    }
}

fn time_of_day(micros: i64) -> String {
    hms(micros)
}

fn timestamp(micros: i64, utc: bool) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let day = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    let z = if utc { "Z" } else { "" };
    format!("{}T{}{z}", ymd(day), hms(rest))
}

fn interval(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("interval must be 16 bytes".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into().expect("8 bytes"));
    let days = i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes"));
    let months = i32::from_be_bytes(raw[12..16].try_into().expect("4 bytes"));
    let mut out = String::from("P");
    let (y, mo) = (months / 12, months % 12);
    if y != 0 {
        write!(out, "{y}Y")?;
    }
    if mo != 0 {
        write!(out, "{mo}M")?;
    }
    if days != 0 {
        write!(out, "{days}D")?;
    }
    if micros != 0 {
        out.push('T');
        let neg = micros < 0;
        let abs = micros.unsigned_abs();
        let (h, m) = (abs / 3_600_000_000, (abs / 60_000_000) % 60);
        let s = abs % 60_000_000;
        let sign = if neg { "-" } else { "" };
        if h != 0 {
            write!(out, "{sign}{h}H")?;
        }
        if m != 0 {
            write!(out, "{sign}{m}M")?;
        }
        if s != 0 {
            let (whole, frac) = (s / 1_000_000, s % 1_000_000);
            if frac == 0 {
                write!(out, "{sign}{whole}S")?;
            } else {
                let f = format!("{frac:06}");
                write!(out, "{sign}{whole}.{}S", f.trim_end_matches('0'))?;
            }
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    Ok(out)
}

/// Why a JSON value does not fit its parameter.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parameter ${index} is {ty}; {problem}")]
pub struct ParamError {
    pub index: usize,
    pub ty: String,
    pub problem: String,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text-format literal for `value` as a `ty` parameter, or `None` for NULL.
pub fn to_text(value: &Value, ty: &Type, index: usize) -> Result<Option<String>, ParamError> {
    let err = |problem: String| ParamError {
        index,
        ty: ty.name().to_string(),
        problem,
    };
    let want = |what: &str| err(format!("expected {what}, got {}", kind_of(value)));
    if value.is_null() {
        return Ok(None);
    }
    if let Kind::Array(member) = ty.kind() {
        let Value::Array(items) = value else {
            return Err(want("an array"));
        };
        return Ok(Some(array_literal(items, member, index)?));
    }
    if let Kind::Domain(inner) = ty.kind() {
        return to_text(value, inner, index);
    }
    let text = match *ty {
        Type::BOOL => match value {
            Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            _ => return Err(want("a boolean")),
        },
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
            let n = value
                .as_i64()
                .or_else(|| value.as_u64().and_then(|u| i64::try_from(u).ok()));
            let Some(n) = n else {
                return Err(want("an integer"));
            };
            let (lo, hi) = match *ty {
                Type::INT2 => (i16::MIN as i64, i16::MAX as i64),
                Type::INT4 => (i32::MIN as i64, i32::MAX as i64),
                Type::OID => (0, u32::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            if n < lo || n > hi {
                return Err(err(format!("{n} is out of range")));
            }
            n.to_string()
        }
        Type::FLOAT4 | Type::FLOAT8 => match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => s.clone(),
            _ => return Err(want("a number")),
        },
        Type::NUMERIC => match value {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err(want("a number or a decimal string")),
        },
        Type::JSON | Type::JSONB => value.to_string(),
        Type::BYTEA => match value {
            Value::String(s) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| err("expected base64".into()))?;
                let mut hex = String::with_capacity(2 + bytes.len() * 2);
                hex.push_str("\\x");
                for b in bytes {
                    write!(hex, "{b:02x}").expect("writing to a String");
                }
                hex
            }
            _ => return Err(want("a base64 string")),
        },
        // Text, and everything PostgreSQL parses from a string: uuid, dates, times,
        // intervals, inet, enums...
        _ => match value {
            Value::String(s) => s.clone(),
            _ => return Err(want("a string")),
        },
    };
    if text.contains('\0') {
        // PostgreSQL would refuse it too, with a less helpful encoding error.
        return Err(err(
            "contains the NUL character (\\u0000), which PostgreSQL text cannot hold; send binary data as bytea (base64)".into(),
        ));
    }
    Ok(Some(text))
}

fn array_literal(items: &[Value], member: &Type, index: usize) -> Result<String, ParamError> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(inner) => out.push_str(&array_literal(inner, member, index)?),
            Value::Null => out.push_str("NULL"),
            v => {
                let text = to_text(v, member, index)?.expect("not null");
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Ok(out)
}

/// A parameter already checked and turned into text.
#[derive(Debug)]
pub struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_text_is_refused_with_a_clear_error() {
        let v = serde_json::json!("a\u{0}b");
        for ty in [Type::TEXT, Type::VARCHAR, Type::UUID, Type::NUMERIC] {
            let e = to_text(&v, &ty, 1).unwrap_err().to_string();
            assert!(e.contains("NUL"), "{ty}: {e}");
        }
        let e = to_text(&serde_json::json!(["x", "\u{0}"]), &Type::TEXT_ARRAY, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NUL"), "{e}");
        // JSON escapes it instead: the text sent holds no NUL byte.
        let j = to_text(&serde_json::json!({"k": "\u{0}"}), &Type::JSONB, 1)
            .unwrap()
            .unwrap();
        assert!(!j.contains('\0'));
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(9190), "2025-02-28");
        assert_eq!(timestamp(0, true), "2000-01-01T00:00:00Z");
        assert_eq!(
            timestamp(86_400_000_000 + 3_723_456_000, false),
            "2000-01-02T01:02:03.456"
        );
        assert_eq!(time_of_day(45_296_000_001), "12:34:56.000001");
    }

    #[test]
    fn intervals() {
        let enc = |micros: i64, days: i32, months: i32| {
            let mut b = micros.to_be_bytes().to_vec();
            b.extend(days.to_be_bytes());
            b.extend(months.to_be_bytes());
            interval(&b).unwrap()
        };
        assert_eq!(enc(0, 0, 0), "PT0S");
        assert_eq!(enc(3_723_500_000, 3, 14), "P1Y2M3DT1H2M3.5S");
        assert_eq!(enc(-60_000_000, 0, 0), "PT-1M");
    }

    #[test]
    fn params() {
        assert_eq!(
            to_text(&Value::Bool(true), &Type::BOOL, 1)
                .unwrap()
                .unwrap(),
            "t"
        );
        let e = to_text(&Value::String("x".into()), &Type::INT4, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter $2 is int4; expected an integer, got a string"
        );
        let e = to_text(&serde_json::json!(70000), &Type::INT2, 1).unwrap_err();
        assert_eq!(e.to_string(), "parameter $1 is int2; 70000 is out of range");
        let arr = serde_json::json!(["a\"b", null, "c\\d"]);
        assert_eq!(
            to_text(&arr, &Type::TEXT_ARRAY, 1).unwrap().unwrap(),
            r#"{"a\"b",NULL,"c\\d"}"#
        );
        let nested = serde_json::json!([[1, 2], [3, 4]]);
        assert_eq!(
            to_text(&nested, &Type::INT4_ARRAY, 1).unwrap().unwrap(),
            r#"{{"1","2"},{"3","4"}}"#
        );
        assert_eq!(
            to_text(&serde_json::json!("AAE="), &Type::BYTEA, 1)
                .unwrap()
                .unwrap(),
            "\\x0001"
        );
    }
}
