//! Decoding of the Kubernetes protobuf bodies kubectl sends for built-in kinds.
//!
//! kubectl's generator commands (`kubectl create secret generic`, `kubectl create namespace`)
//! POST typed objects as `application/vnd.kubernetes.protobuf` and kubectl 1.32 does not fall
//! back to JSON on 415. The embedded API therefore decodes the envelope (`k8s\0` + runtime.Unknown)
//! and the few messages those commands produce: Secret, Namespace and the ObjectMeta fields they
//! set. Hand-written because the only crate with the generated types (k8s-pb, prost) would compile
//! every Kubernetes message for two kinds; the protobuf wire format itself is small.
use base64::Engine;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn bad(what: &str) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {what}"))
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> ApiResult<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(bad("varint too long"))
    }

    /// The next (field number, value); fixed-width fields are skipped.
    fn next(&mut self) -> ApiResult<Option<(u64, Field<'a>)>> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let (num, wire) = (key >> 3, key & 7);
            match wire {
                0 => return Ok(Some((num, Field::Varint(self.varint()?)))),
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                    if len > self.buf.len() {
                        return Err(bad("truncated field"));
                    }
                    let (v, rest) = self.buf.split_at(len);
                    self.buf = rest;
                    return Ok(Some((num, Field::Bytes(v))));
                }
                1 => self.skip(8)?,
                5 => self.skip(4)?,
                _ => return Err(bad("unsupported wire type")),
            }
        }
    }

    fn skip(&mut self, n: usize) -> ApiResult<()> {
        if n > self.buf.len() {
            return Err(bad("truncated fixed field"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn text(b: &[u8]) -> ApiResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8"))
}

/// A `map<string, X>` entry: key = 1, value = 2.
fn map_entry(b: &[u8]) -> ApiResult<(String, &[u8])> {
    let mut r = Reader { buf: b };
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(x)) => k = text(x)?,
            (2, Field::Bytes(x)) => v = x,
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader { buf: b };
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(x)) => drop(m.insert("name".into(), json!(text(x)?))),
            (2, Field::Bytes(x)) => drop(m.insert("generateName".into(), json!(text(x)?))),
            (3, Field::Bytes(x)) => drop(m.insert("namespace".into(), json!(text(x)?))),
            (6, Field::Bytes(x)) => drop(m.insert("resourceVersion".into(), json!(text(x)?))),
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                labels.insert(k, json!(text(v)?));
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                annotations.insert(k, json!(text(v)?));
            }
            (14, Field::Bytes(x)) => finalizers.push(json!(text(x)?)),
            _ => {}
        }
    }
    // proto2 strings may be present but empty; empty means unset in Kubernetes.
    m.retain(|_, v| v.as_str().is_none_or(|s| !s.is_empty()));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn secret(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader { buf: b };
    let mut o = json!({"apiVersion": "v1", "kind": "Secret"});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(x)) => o["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
            (3, Field::Bytes(x)) => o["type"] = json!(text(x)?),
            (4, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                string_data.insert(k, json!(text(v)?));
            }
            (5, Field::Varint(v)) => o["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        o["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        o["stringData"] = Value::Object(string_data);
    }
    Ok(o)
}

fn namespace(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader { buf: b };
    let mut o = json!({"apiVersion": "v1", "kind": "Namespace"});
    while let Some((num, f)) = r.next()? {
        if let (1, Field::Bytes(x)) = (num, f) {
            o["metadata"] = object_meta(x)?;
        }
    }
    Ok(o)
}

/// Decodes a protobuf-encoded Secret or Namespace into its JSON form.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let inner = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s envelope"))?;
    let mut r = Reader { buf: inner };
    let (mut kind, mut raw): (String, &[u8]) = (String::new(), &[]);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((n, f)) = t.next()? {
                    if let (2, Field::Bytes(k)) = (n, f) {
                        kind = text(k)?;
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    match kind.as_str() {
        "Secret" => secret(raw),
        "Namespace" => namespace(raw),
        other => Err(ApiError::unsupported_media(format!(
            "protobuf bodies are accepted only for Secrets and Namespaces, not {other:?}; send JSON"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [
            field(1, b"creds"),
            field(11, &[field(1, b"app"), field(2, b"osprov")].concat()),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &[field(1, b"user"), field(2, b"admin")].concat()),
            field(3, b"Opaque"),
        ]
        .concat();
        let unknown = [
            field(1, &[field(1, b"v1"), field(2, b"Secret")].concat()),
            field(2, &secret),
        ]
        .concat();
        let body = [MAGIC, &unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(v["metadata"]["name"], "creds");
        assert_eq!(v["metadata"]["labels"]["app"], "osprov");
        assert_eq!(v["data"]["user"], "YWRtaW4=");
        assert_eq!(v["type"], "Opaque");
    }
}
