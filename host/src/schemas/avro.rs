//! Avro binary encoding of a JSON payload, and back.
//!
//! Written against the schema tree of `apache-avro` rather than through its
//! `Value` type, for two reasons: a refusal names the JSON path and the rule
//! that failed (what a publisher needs to fix it), and encoding, checking and
//! the JSON mapping happen in one pass over the payload.
//!
//! JSON mapping (what handlers see, and what publishers send): records are
//! objects, maps are objects, arrays are arrays, enums are their symbol,
//! unions are the plain value (the first branch it fits is chosen), `bytes`
//! and `fixed` are strings whose characters are bytes 0-255 (Avro's own JSON
//! encoding), logical types are their underlying type.

use apache_avro::schema::{Name, Schema};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A parsed Avro schema with its named types, for `Ref` lookups.
pub struct AvroSchema {
    root: Schema,
    names: HashMap<Name, Schema>,
}

/// Where a payload does not fit, and which rule it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Misfit {
    pub path: String,
    pub rule: String,
}

impl AvroSchema {
    /// Parses a schema's JSON text (from a registry or a schemas folder:
    /// outside input). apache-avro 0.21 panics on some invalid names (an
    /// `unwrap` in `Name::parse`, found by `make fuzz`): that is a refusal
    /// here like any other.
    pub fn parse(text: &str) -> Result<Self, String> {
        std::panic::catch_unwind(|| Self::parse_unguarded(text)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the parser failed");
            Err(format!("not a valid Avro schema: {why}"))
        })
    }

    fn parse_unguarded(text: &str) -> Result<Self, String> {
        let root = Schema::parse_str(text).map_err(|e| format!("not a valid Avro schema: {e}"))?;
        let names = apache_avro::schema::ResolvedSchema::try_from(&root)
            .map_err(|e| format!("Avro schema has unresolved names: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(Self { root, names })
    }

    /// Checks `value` against the schema and appends its Avro encoding.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), Misfit> {
        let mut path = String::new();
        self.put(&self.root, value, &mut path, out)
    }

    /// Reads one datum written with this schema, as JSON.
    pub fn decode(&self, mut bytes: &[u8]) -> Result<Value, String> {
        let v = self.get(&self.root, &mut bytes)?;
        if !bytes.is_empty() {
            return Err(format!(
                "{} bytes left after the Avro datum (written with another schema?)",
                bytes.len()
            ));
        }
        Ok(v)
    }

    fn resolve<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => self.names.get(name).unwrap_or(s),
            _ => s,
        }
    }

    fn put(
        &self,
        schema: &Schema,
        v: &Value,
        path: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<(), Misfit> {
        let misfit = |path: &str, rule: String| Misfit {
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_owned()
            },
            rule,
        };
        let want =
            |path: &str, what: &str| misfit(path, format!("expected {what}, found {}", kind(v)));
        match self.resolve(schema) {
            Schema::Null => v.is_null().then_some(()).ok_or_else(|| want(path, "null")),
            Schema::Boolean => {
                let b = v.as_bool().ok_or_else(|| want(path, "a boolean"))?;
                out.push(b as u8);
                Ok(())
            }
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| want(path, "an integer (Avro int)"))?;
                let n = i32::try_from(n)
                    .map_err(|_| misfit(path, format!("{n} does not fit an Avro int (32 bits)")))?;
                put_long(n as i64, out);
                Ok(())
            }
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                let n = v
                    .as_i64()
                    .ok_or_else(|| want(path, "an integer (Avro long)"))?;
                put_long(n, out);
                Ok(())
            }
            Schema::Float => {
                let f = v
                    .as_f64()
                    .ok_or_else(|| want(path, "a number (Avro float)"))?;
                out.extend_from_slice(&(f as f32).to_le_bytes());
                Ok(())
            }
            Schema::Double => {
                let f = v
                    .as_f64()
                    .ok_or_else(|| want(path, "a number (Avro double)"))?;
                out.extend_from_slice(&f.to_le_bytes());
                Ok(())
            }
            Schema::String | Schema::Uuid => {
                let s = v.as_str().ok_or_else(|| want(path, "a string"))?;
                put_bytes(s.as_bytes(), out);
                Ok(())
            }
            Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) => {
                let b = byte_string(v).ok_or_else(|| want(path, "a byte string"))?;
                put_bytes(&b, out);
                Ok(())
            }
            Schema::Fixed(f) => {
                let b = byte_string(v).ok_or_else(|| want(path, "a byte string"))?;
                if b.len() != f.size {
                    return Err(misfit(
                        path,
                        format!(
                            "fixed `{}` takes {} bytes, found {}",
                            f.name,
                            f.size,
                            b.len()
                        ),
                    ));
                }
                out.extend_from_slice(&b);
                Ok(())
            }
            Schema::Duration => {
                let b = byte_string(v).ok_or_else(|| want(path, "a byte string"))?;
                if b.len() != 12 {
                    return Err(misfit(path, "an Avro duration takes 12 bytes".into()));
                }
                out.extend_from_slice(&b);
                Ok(())
            }
            Schema::Enum(e) => {
                let s = v.as_str().ok_or_else(|| want(path, "an enum symbol"))?;
                let i = e.symbols.iter().position(|x| x == s).ok_or_else(|| {
                    misfit(
                        path,
                        format!(
                            "{s:?} is not a symbol of enum `{}` ({})",
                            e.name,
                            e.symbols.join(", ")
                        ),
                    )
                })?;
                put_long(i as i64, out);
                Ok(())
            }
            Schema::Array(a) => {
                let items = v.as_array().ok_or_else(|| want(path, "an array"))?;
                if !items.is_empty() {
                    put_long(items.len() as i64, out);
                    for (i, item) in items.iter().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("/{i}"));
                        self.put(&a.items, item, path, out)?;
                        path.truncate(len);
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Map(m) => {
                let entries = v
                    .as_object()
                    .ok_or_else(|| want(path, "an object (Avro map)"))?;
                if !entries.is_empty() {
                    put_long(entries.len() as i64, out);
                    for (k, item) in entries {
                        put_bytes(k.as_bytes(), out);
                        let len = path.len();
                        push_key(path, k);
                        self.put(&m.types, item, path, out)?;
                        path.truncate(len);
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Union(u) => {
                // The first branch the value fits, so `["null", "string"]`
                // takes both null and "text".
                let mut first: Option<Misfit> = None;
                for (i, branch) in u.variants().iter().enumerate() {
                    let mut body = Vec::new();
                    let len = path.len();
                    match self.put(branch, v, path, &mut body) {
                        Ok(()) => {
                            put_long(i as i64, out);
                            out.extend_from_slice(&body);
                            return Ok(());
                        }
                        Err(m) => {
                            path.truncate(len);
                            first.get_or_insert(m);
                        }
                    }
                }
                Err(misfit(
                    path,
                    format!(
                        "fits no branch of the union ({}); first branch: {}",
                        u.variants()
                            .iter()
                            .map(type_name)
                            .collect::<Vec<_>>()
                            .join(", "),
                        first.map(|m| m.rule).unwrap_or_default()
                    ),
                ))
            }
            Schema::Record(r) => {
                let obj = v.as_object().ok_or_else(|| want(path, "an object"))?;
                for field in &r.fields {
                    let len = path.len();
                    push_key(path, &field.name);
                    let value = match (obj.get(&field.name), &field.default) {
                        (Some(x), _) => x,
                        (None, Some(default)) => default,
                        (None, None) => {
                            return Err(misfit(
                                path,
                                format!("required field `{}` is missing", field.name),
                            ));
                        }
                    };
                    self.put(&field.schema, value, path, out)?;
                    path.truncate(len);
                }
                if let Some(extra) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
                    let mut at = path.clone();
                    push_key(&mut at, extra);
                    return Err(misfit(
                        &at,
                        format!("field `{extra}` is not in record `{}`", r.name),
                    ));
                }
                Ok(())
            }
            Schema::Ref { name } => Err(misfit(path, format!("unknown named type `{name}`"))),
        }
    }

    fn get(&self, schema: &Schema, b: &mut &[u8]) -> Result<Value, String> {
        Ok(match self.resolve(schema) {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Bool(take(b, 1)?[0] != 0),
            Schema::Int
            | Schema::Date
            | Schema::TimeMillis
            | Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Value::from(get_long(b)?),
            Schema::Float => {
                let x = f32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes"));
                serde_json::Number::from_f64(x as f64).map_or(Value::Null, Value::Number)
            }
            Schema::Double => {
                let x = f64::from_le_bytes(take(b, 8)?.try_into().expect("8 bytes"));
                serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
            }
            Schema::String | Schema::Uuid => {
                let raw = get_bytes(b)?;
                Value::String(
                    std::str::from_utf8(raw)
                        .map_err(|_| "an Avro string is not UTF-8".to_string())?
                        .to_owned(),
                )
            }
            Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) => {
                Value::String(get_bytes(b)?.iter().map(|&c| c as char).collect())
            }
            Schema::Fixed(f) => {
                Value::String(take(b, f.size)?.iter().map(|&c| c as char).collect())
            }
            Schema::Duration => Value::String(take(b, 12)?.iter().map(|&c| c as char).collect()),
            Schema::Enum(e) => {
                let i = get_long(b)?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| e.symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} out of range for `{}`", e.name))?;
                Value::String(s.clone())
            }
            Schema::Array(a) => {
                let mut items = Vec::new();
                while let Some(n) = block_len(b)? {
                    for _ in 0..n {
                        items.push(self.get(&a.items, b)?);
                    }
                }
                Value::Array(items)
            }
            Schema::Map(m) => {
                let mut map = Map::new();
                while let Some(n) = block_len(b)? {
                    for _ in 0..n {
                        let k = std::str::from_utf8(get_bytes(b)?)
                            .map_err(|_| "an Avro map key is not UTF-8".to_string())?
                            .to_owned();
                        map.insert(k, self.get(&m.types, b)?);
                    }
                }
                Value::Object(map)
            }
            Schema::Union(u) => {
                let i = get_long(b)?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {i} out of range"))?;
                self.get(branch, b)?
            }
            Schema::Record(r) => {
                let mut map = Map::new();
                for field in &r.fields {
                    map.insert(field.name.clone(), self.get(&field.schema, b)?);
                }
                Value::Object(map)
            }
            Schema::Ref { name } => return Err(format!("unknown named type `{name}`")),
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.to_string(),
        Schema::Enum(e) => e.name.to_string(),
        Schema::Fixed(f) => f.name.to_string(),
        Schema::Ref { name } => name.to_string(),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_ascii_lowercase(),
    }
}

/// JSON Pointer escaping (RFC 6901).
fn push_key(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn byte_string(v: &Value) -> Option<Vec<u8>> {
    v.as_str()?
        .chars()
        .map(|c| u8::try_from(c as u32).ok())
        .collect()
}

fn put_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_long(b.len() as i64, out);
    out.extend_from_slice(b);
}

fn get_long(b: &mut &[u8]) -> Result<i64, String> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *take(b, 1)?.first().expect("1 byte");
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err("an Avro varint is longer than 10 bytes".into())
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("the Avro datum ends early".into());
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn get_bytes<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let n = get_long(b)?;
    let n = usize::try_from(n).map_err(|_| format!("negative Avro length {n}"))?;
    take(b, n)
}

/// The item count of the next array or map block; None at the end. A
/// negative count is followed by the block's size in bytes.
fn block_len(b: &mut &[u8]) -> Result<Option<u64>, String> {
    let n = get_long(b)?;
    if n == 0 {
        return Ok(None);
    }
    if n < 0 {
        get_long(b)?;
    }
    Ok(Some(n.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
        {"name":"id","type":"string"},
        {"name":"qty","type":"int"},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
        {"name":"again","type":["null","Kind"],"default":null},
        {"name":"price","type":"double"}]}"#;

    #[test]
    fn a_payload_round_trips_as_the_same_json() {
        let s = AvroSchema::parse(ORDER).unwrap();
        let v = json!({"id":"o-1","qty":3,"note":"hi","tags":["x","y"],"kind":"B","again":"A","price":2.5});
        let mut out = Vec::new();
        s.encode(&v, &mut out).unwrap();
        assert_eq!(s.decode(&out).unwrap(), v);
        // A missing field with a default takes it.
        let v = json!({"id":"o-2","qty":-7,"tags":[],"kind":"A","price":0.0});
        let mut out = Vec::new();
        s.encode(&v, &mut out).unwrap();
        let back = s.decode(&out).unwrap();
        assert_eq!(back["note"], Value::Null);
        assert_eq!(back["qty"], json!(-7));
    }

    #[test]
    fn a_misfit_names_its_path_and_rule() {
        let s = AvroSchema::parse(ORDER).unwrap();
        let cases = [
            (
                json!({"id":"o","qty":"3","tags":[],"kind":"A","price":1}),
                "/qty",
                "expected an integer",
            ),
            (
                json!({"id":"o","qty":3,"tags":[1],"kind":"A","price":1}),
                "/tags/0",
                "expected a string",
            ),
            (
                json!({"id":"o","qty":3,"tags":[],"kind":"C","price":1}),
                "/kind",
                "not a symbol",
            ),
            (
                json!({"qty":3,"tags":[],"kind":"A","price":1}),
                "/id",
                "required field `id`",
            ),
            (
                json!({"id":"o","qty":3,"tags":[],"kind":"A","price":1,"x":1}),
                "/x",
                "not in record",
            ),
            (
                json!({"id":"o","qty":3_000_000_000u64,"tags":[],"kind":"A","price":1}),
                "/qty",
                "32 bits",
            ),
        ];
        for (v, path, rule) in cases {
            let m = s.encode(&v, &mut Vec::new()).unwrap_err();
            assert_eq!(m.path, path, "{m:?}");
            assert!(m.rule.contains(rule), "{m:?}");
        }
    }

    #[test]
    fn zigzag_varints_match_the_spec() {
        for (n, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 1]),
        ] {
            let mut out = Vec::new();
            put_long(n, &mut out);
            assert_eq!(out, bytes);
            assert_eq!(get_long(&mut out.as_slice()).unwrap(), n);
        }
        let mut out = Vec::new();
        put_long(i64::MIN, &mut out);
        assert_eq!(get_long(&mut out.as_slice()).unwrap(), i64::MIN);
    }
}
