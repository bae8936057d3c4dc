//! Borrowed, exact-preserving view of a JSON object.
//!
//! The payload is never turned into `serde_json::Value`: that would round numbers past 2^53
//! through `f64` (the workspace cannot enable `arbitrary_precision`, it is global and breaks
//! kube) and re-encode strings. Instead each member value stays a `&RawValue`, a slice of the
//! original body, and is copied byte for byte into the Segment message.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The JSON type of a raw value, read from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{...}`
    Object,
    /// `[...]`
    Array,
    /// `"..."`
    String,
    /// A number literal.
    Number,
    /// `true` / `false`
    Bool,
    /// `null`
    Null,
}

/// Trimmed text of a raw value (serde_json already trims, this only guards the assumption).
pub fn text(raw: &RawValue) -> &str {
    raw.get().trim_ascii()
}

/// The JSON type of `raw`.
pub fn kind(raw: &RawValue) -> Kind {
    match text(raw).as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

/// A member name, borrowed from the body unless it contained escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The members of a JSON object in document order, values left raw.
#[derive(Default)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl fmt::Debug for Object<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Member values may hold personal data; show the shape only.
        f.debug_struct("Object")
            .field("members", &self.members.len())
            .finish()
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key.0, value));
                }
                Ok(Object { members })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl<'a> Object<'a> {
    /// Parses `body` as a JSON object; `None` when it is not valid JSON or not an object.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// Parses a raw member value as an object; `None` for any other type.
    pub fn from_raw(raw: &'a RawValue) -> Option<Self> {
        if kind(raw) != Kind::Object {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The value of member `name`. With duplicate names the last one wins, as in `JSON.parse`.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// Number of members (duplicates included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the object has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Resolves an RFC 6901 JSON pointer inside `raw`, descending through objects and arrays.
///
/// Returns `None` when any step is missing or not a container (JavaScript's `undefined`).
pub fn pointer<'a>(raw: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    if pointer.is_empty() {
        return Some(raw);
    }
    let rest = pointer.strip_prefix('/')?;
    let mut current = raw;
    for token in rest.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match kind(current) {
            Kind::Object => Object::from_raw(current)?.get(&token)?,
            Kind::Array => {
                // Leading zeros are not valid array indices in RFC 6901.
                if token.len() > 1 && token.starts_with('0') {
                    return None;
                }
                let index: usize = token.parse().ok()?;
                let items: Vec<&'a RawValue> = serde_json::from_str(current.get()).ok()?;
                *items.get(index)?
            }
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_exact_and_last_duplicate_wins() {
        let body = br#"{"n": 12345678901234567890, "s":"Zo\u00eb", "n":1.50e3, "o":{"a":[1, 2]}}"#;
        let obj = Object::parse(body).unwrap();
        assert_eq!(obj.len(), 4);
        assert_eq!(obj.get("n").unwrap().get(), "1.50e3");
        assert_eq!(obj.get("s").unwrap().get(), r#""Zo\u00eb""#);
        assert_eq!(obj.get("o").unwrap().get(), r#"{"a":[1, 2]}"#);
        assert!(obj.get("missing").is_none());
    }

    #[test]
    fn escaped_keys_match_their_meaning() {
        let obj = Object::parse(br#"{"con\u0074act":1}"#).unwrap();
        assert_eq!(obj.get("contact").unwrap().get(), "1");
    }

    #[test]
    fn rejects_non_objects() {
        for body in [
            &b"[]"[..],
            b"1",
            b"\"x\"",
            b"null",
            b"",
            b"{",
            b"{} x",
            b"\xff",
        ] {
            assert!(Object::parse(body).is_none(), "{body:?}");
        }
        assert!(Object::parse(b" {} \n").is_some());
    }

    #[test]
    fn kinds() {
        let obj =
            Object::parse(br#"{"a":{},"b":[],"c":"","d":-1,"e":true,"f":false,"g":null}"#).unwrap();
        let kinds: Vec<Kind> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|k| kind(obj.get(k).unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::Object,
                Kind::Array,
                Kind::String,
                Kind::Number,
                Kind::Bool,
                Kind::Bool,
                Kind::Null
            ]
        );
    }

    #[test]
    fn pointers() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"a":{"b/c":[10,{"d~e":"x"}]},"n":null}"#).unwrap();
        assert_eq!(pointer(&raw, "/a/b~1c/0").unwrap().get(), "10");
        assert_eq!(pointer(&raw, "/a/b~1c/1/d~0e").unwrap().get(), r#""x""#);
        assert_eq!(pointer(&raw, "/n").unwrap().get(), "null");
        assert!(pointer(&raw, "/a/b~1c/2").is_none());
        assert!(pointer(&raw, "/a/b~1c/01").is_none());
        assert!(pointer(&raw, "/n/x").is_none());
        assert!(pointer(&raw, "a").is_none());
        assert_eq!(pointer(&raw, "").unwrap().get(), raw.get());
    }
}
