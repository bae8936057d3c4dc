//! Seshn webhook → Segment messages: a pure function of (event name, raw body, receive time).
//!
//! The profiles are tables ([`table::SEED`], [`table::SPEC`]); this module only interprets them.
//! Values are copied from the raw body byte for byte (see [`json`]), so large integers, unicode
//! escapes and nested values reach Segment exactly as Seshn sent them. `docs/mapping.md` lists
//! every deliberate difference from the seed handler.

pub mod json;
pub mod table;
pub mod tracking_plan;

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::SystemTime;

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use json::{Kind, Object};
use table::{Fallback, Rule, Source, Table, Transform};

/// Name used in `context.library`.
pub const LIBRARY_NAME: &str = "seshn-segment";
/// Version used in `context.library`.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest accepted event name or delivery id (longer values are refused, not truncated).
pub const MAX_HEADER_VALUE_LEN: usize = 256;

/// Namespace of the deterministic message ids (a fixed random UUID; changing it would break
/// deduplication across an upgrade).
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_2c55_8a0b_4d7e_9c3f_5b21_7e4a_d903);

/// A mapping profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Profile {
    /// Identical to the seed handler: `Seshn <event>`, camelCase properties.
    #[default]
    Seed,
    /// Segment's naming spec: Title Case events, snake_case properties, e-commerce events.
    Spec,
}

impl Profile {
    /// The profile's table.
    pub fn table(self) -> &'static Table {
        match self {
            Self::Seed => &table::SEED,
            Self::Spec => &table::SPEC,
        }
    }

    /// Name as used on the command line.
    pub fn as_str(self) -> &'static str {
        self.table().name
    }
}

impl FromStr for Profile {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seed" => Ok(Self::Seed),
            "spec" => Ok(Self::Spec),
            _ => Err(ConfigError::UnknownProfile),
        }
    }
}

/// A property copied from the payload by JSON pointer (the bridge's `mapping.extraProperties`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ExtraProperty {
    /// Property name in the track call.
    pub name: String,
    /// RFC 6901 pointer into the payload, e.g. `/slot/endTime`.
    pub pointer: String,
}

/// Parses a list of extra properties: either `name=/pointer,...`, or the JSON list the operator
/// writes (`[{"name": "...", "pointer": "..."}]`), which also carries pointers with commas.
pub fn parse_extra_properties(s: &str) -> Result<Vec<ExtraProperty>, ConfigError> {
    let s = s.trim();
    let list: Vec<ExtraProperty> = if s.starts_with('[') {
        serde_json::from_str(s).map_err(|_| ConfigError::ExtraProperty)?
    } else {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?
    };
    if list
        .iter()
        .any(|p| p.name.is_empty() || !(p.pointer.is_empty() || p.pointer.starts_with('/')))
    {
        return Err(ConfigError::ExtraProperty);
    }
    Ok(list)
}

impl FromStr for ExtraProperty {
    type Err = ConfigError;
    /// Parses `name=/pointer`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pointer) = s.split_once('=').ok_or(ConfigError::ExtraProperty)?;
        let name = name.trim();
        let pointer = pointer.trim();
        if name.is_empty() || !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(ConfigError::ExtraProperty);
        }
        Ok(Self {
            name: name.to_owned(),
            pointer: pointer.to_owned(),
        })
    }
}

/// Configuration of a [`Mapper`].
#[derive(Debug, Clone, Default)]
pub struct MappingConfig {
    /// The profile.
    pub profile: Profile,
    /// Namespaces the deterministic message ids (the bridge's uid).
    pub bridge_id: String,
    /// Send an identify when the payload has a contact with a usable id.
    pub identify: bool,
    /// Extra track properties copied by JSON pointer, after the profile's properties.
    pub extra_properties: Vec<ExtraProperty>,
}

/// An invalid mapping configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not `seed` or `spec`.
    #[error("unknown mapping profile (expected seed or spec)")]
    UnknownProfile,
    /// Not `name=/pointer`.
    #[error("an extra property must look like name=/json/pointer")]
    ExtraProperty,
    /// An extra property would duplicate a property of the profile.
    #[error("extra property {0:?} clashes with a property of the profile")]
    ExtraPropertyClash(String),
}

/// Why a webhook cannot be mapped. Texts hold no payload content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// `X-Webhook-Event` is missing (the seed produced `Seshn null`).
    #[error("X-Webhook-Event header missing")]
    EventMissing,
    /// Empty, too long, or not visible ASCII.
    #[error("X-Webhook-Event header invalid")]
    EventInvalid,
    /// The body is not valid JSON, or not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
}

/// One verified webhook delivery.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The `X-Webhook-Event` value (validated with [`validate_event_name`]).
    pub event: &'a str,
    /// The raw body, exactly as signed.
    pub body: &'a [u8],
    /// When the forwarder received it: the seed's `new Date()`, becomes `timestamp`.
    pub received_at: SystemTime,
    /// A delivery id header (`X-Webhook-Id`), preferred over the body hash for message ids.
    pub delivery_id: Option<&'a str>,
}

/// The Segment messages for one delivery: the track call first, then the identify, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// Serialised messages (valid JSON objects).
    pub messages: Vec<String>,
}

/// Checks an event name header value: non-empty after trimming, at most
/// [`MAX_HEADER_VALUE_LEN`] bytes, visible ASCII (HTTP header rules already exclude controls).
pub fn validate_event_name(value: Option<&[u8]>) -> Result<&str, MapError> {
    let value = value.ok_or(MapError::EventMissing)?;
    let value = value.trim_ascii();
    if value.is_empty()
        || value.len() > MAX_HEADER_VALUE_LEN
        || !value.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(MapError::EventInvalid);
    }
    std::str::from_utf8(value).map_err(|_| MapError::EventInvalid)
}

/// A usable delivery id, or `None` (an unusable one is ignored: the body hash still works).
pub fn validate_delivery_id(value: Option<&[u8]>) -> Option<&str> {
    validate_event_name(value).ok()
}

/// Maps deliveries with one profile and configuration.
#[derive(Debug, Clone)]
pub struct Mapper {
    table: &'static Table,
    bridge_id: String,
    identify: bool,
    extra_properties: Vec<ExtraProperty>,
    /// `,"context":{...}}`, identical for every message.
    tail: String,
}

impl Mapper {
    /// Builds a mapper; checks that extra properties do not clash with the profile's names.
    pub fn new(config: MappingConfig) -> Result<Self, ConfigError> {
        let table = config.profile.table();
        for extra in &config.extra_properties {
            if table.properties.iter().any(|r| r.name == extra.name)
                || config
                    .extra_properties
                    .iter()
                    .filter(|e| e.name == extra.name)
                    .count()
                    > 1
            {
                return Err(ConfigError::ExtraPropertyClash(extra.name.clone()));
            }
        }
        let mut tail = String::from(r#","context":{"library":{"name":"#);
        push_json_string(&mut tail, LIBRARY_NAME);
        tail.push_str(r#","version":"#);
        push_json_string(&mut tail, LIBRARY_VERSION);
        tail.push_str("}}}");
        Ok(Self {
            table,
            bridge_id: config.bridge_id,
            identify: config.identify,
            extra_properties: config.extra_properties,
            tail,
        })
    }

    /// The profile's table.
    pub fn table(&self) -> &'static Table {
        self.table
    }

    /// Maps one delivery. Fails only when the body is not a JSON object.
    pub fn map(&self, delivery: &Delivery<'_>) -> Result<Mapped, MapError> {
        let top = Object::parse(delivery.body).ok_or(MapError::NotAnObject)?;
        let mut doc = Doc {
            top,
            nested: Vec::new(),
            event: delivery.event,
        };
        let timestamp = segment::rfc3339_millis(delivery.received_at);
        let ids = MessageIds::new(&self.bridge_id, delivery);
        let user_id = self.user_id(&mut doc);

        let mut messages = Vec::with_capacity(2);
        let mut track = String::with_capacity(delivery.body.len() / 2 + 384);
        track.push_str(r#"{"type":"track","event":"#);
        push_json_string(&mut track, &(self.table.event_name)(delivery.event));
        match (&user_id, self.table.fallback) {
            (Some(id), _) => {
                track.push_str(r#","userId":"#);
                id.write(&mut track);
            }
            (None, Fallback::UserId(value)) => {
                track.push_str(r#","userId":"#);
                push_json_string(&mut track, value);
            }
            (None, Fallback::AnonymousId(sources)) => {
                track.push_str(r#","anonymousId":"#);
                let stable = sources
                    .iter()
                    .find_map(|source| match doc.resolve(*source) {
                        Value::Raw(raw) => UserId::from_raw(raw),
                        Value::Undefined | Value::Event => None,
                    });
                match stable {
                    Some(id) => id.write(&mut track),
                    None => push_json_string(&mut track, &ids.track),
                }
            }
        }
        track.push_str(r#","properties":{"#);
        let mut first = true;
        for rule in self.table.properties {
            if rule.applies.matches(delivery.event) {
                write_rule(&mut track, &mut first, rule, &mut doc);
            }
        }
        if !self.extra_properties.is_empty() {
            // Only parsed when configured: the common path never pays for it.
            if let Ok(whole) = serde_json::from_slice::<&RawValue>(delivery.body) {
                for extra in &self.extra_properties {
                    if let Some(value) = json::pointer(whole, &extra.pointer) {
                        write_member(&mut track, &mut first, &extra.name);
                        track.push_str(json::text(value));
                    }
                }
            }
        }
        track.push('}');
        write_stamp(&mut track, &timestamp, &ids.track);
        track.push_str(&self.tail);
        messages.push(track);

        // The seed identifies whenever `contact` is truthy, and crashed when it had no id; we
        // identify only a contact object with a usable id.
        if self.identify
            && let Some(id) = doc
                .nested("contact")
                .and_then(|c| c.get("id"))
                .and_then(UserId::from_raw)
        {
            let mut identify = String::with_capacity(256);
            identify.push_str(r#"{"type":"identify","userId":"#);
            id.write(&mut identify);
            identify.push_str(r#","traits":{"#);
            let mut first = true;
            for rule in self.table.traits {
                if rule.applies.matches(delivery.event) {
                    write_rule(&mut identify, &mut first, rule, &mut doc);
                }
            }
            identify.push('}');
            write_stamp(&mut identify, &timestamp, &ids.identify);
            identify.push_str(&self.tail);
            messages.push(identify);
        }
        Ok(Mapped { messages })
    }

    /// `contact?.id ?? contactId`, skipping values that are not usable ids.
    fn user_id<'a>(&self, doc: &mut Doc<'a>) -> Option<UserId<'a>> {
        self.table
            .user_id
            .iter()
            .find_map(|source| match doc.resolve(*source) {
                Value::Raw(raw) => UserId::from_raw(raw),
                Value::Undefined | Value::Event => None,
            })
    }
}

/// The track and identify message ids of one delivery.
struct MessageIds {
    track: String,
    identify: String,
}

impl MessageIds {
    /// UUIDv5 over (bridge id, event name, SHA-256 of the body), or over the delivery id.
    fn new(bridge_id: &str, delivery: &Delivery<'_>) -> Self {
        let mut name = Vec::with_capacity(bridge_id.len() + delivery.event.len() + 96);
        name.extend_from_slice(bridge_id.as_bytes());
        name.push(0);
        name.extend_from_slice(delivery.event.as_bytes());
        name.push(0);
        if let Some(id) = delivery.delivery_id {
            name.extend_from_slice(b"delivery:");
            name.extend_from_slice(id.as_bytes());
        } else {
            name.extend_from_slice(b"sha256:");
            let digest = Sha256::digest(delivery.body);
            let mut hex = [0u8; 64];
            // Encoding 32 bytes into 64 cannot fail.
            if hex::encode_to_slice(digest, &mut hex).is_ok() {
                name.extend_from_slice(&hex);
            }
        }
        let track = Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name);
        name.extend_from_slice(b"\0identify");
        let identify = Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name);
        Self {
            track: track.hyphenated().to_string(),
            identify: identify.hyphenated().to_string(),
        }
    }
}

/// A usable Segment user id taken from the payload.
enum UserId<'a> {
    /// A non-empty JSON string, copied raw (escapes kept).
    Str(&'a str),
    /// A number, written as the exact decimal text in a string (Segment needs strings).
    Num(&'a str),
}

impl<'a> UserId<'a> {
    fn from_raw(raw: &'a RawValue) -> Option<Self> {
        let text = json::text(raw);
        match json::kind(raw) {
            Kind::String if text != r#""""# => Some(Self::Str(text)),
            Kind::Number => Some(Self::Num(text)),
            _ => None,
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Str(raw) => out.push_str(raw),
            Self::Num(text) => {
                out.push('"');
                out.push_str(text);
                out.push('"');
            }
        }
    }
}

/// A resolved source: JavaScript's `undefined`, a raw payload value (null included), or the
/// event name.
#[derive(Clone, Copy)]
enum Value<'a> {
    Undefined,
    Raw(&'a RawValue),
    Event,
}

impl Value<'_> {
    fn is_nullish(self) -> bool {
        match self {
            Self::Undefined => true,
            Self::Raw(raw) => json::kind(raw) == Kind::Null,
            Self::Event => false,
        }
    }
}

/// The parsed payload with nested objects parsed on first use.
struct Doc<'a> {
    top: Object<'a>,
    nested: Vec<(&'static str, Option<Object<'a>>)>,
    event: &'a str,
}

impl<'a> Doc<'a> {
    /// `payload.<name>` parsed as an object (None: absent, null or not an object).
    fn nested(&mut self, name: &'static str) -> Option<&Object<'a>> {
        let index = if let Some(index) = self.nested.iter().position(|(n, _)| *n == name) {
            index
        } else {
            let parsed = self.top.get(name).and_then(Object::from_raw);
            self.nested.push((name, parsed));
            self.nested.len() - 1
        };
        self.nested[index].1.as_ref()
    }

    fn resolve(&mut self, source: Source) -> Value<'a> {
        let found = match source {
            Source::Member(name) => self.top.get(name),
            Source::Nested(object, name) => self.nested(object).and_then(|o| o.get(name)),
            Source::EventName => return Value::Event,
        };
        found.map_or(Value::Undefined, Value::Raw)
    }

    /// `a ?? b ?? c`: the first non-nullish operand, else the last one.
    fn coalesce(&mut self, sources: &[Source]) -> Value<'a> {
        let mut last = Value::Undefined;
        for source in sources {
            last = self.resolve(*source);
            if !last.is_nullish() {
                break;
            }
        }
        last
    }
}

fn write_member(out: &mut String, first: &mut bool, name: &str) {
    if !std::mem::take(first) {
        out.push(',');
    }
    push_json_string(out, name);
    out.push(':');
}

/// Writes `"name":value` unless the value is undefined (JSON.stringify omits undefined).
fn write_rule(out: &mut String, first: &mut bool, rule: &Rule, doc: &mut Doc<'_>) {
    let value = doc.coalesce(rule.sources);
    match (value, rule.transform) {
        (Value::Undefined, _) => {}
        (Value::Event, _) => {
            write_member(out, first, rule.name);
            push_json_string(out, doc.event);
        }
        (Value::Raw(raw), Transform::Copy) => {
            write_member(out, first, rule.name);
            out.push_str(json::text(raw));
        }
        (Value::Raw(raw), Transform::Upper) => {
            write_member(out, first, rule.name);
            match serde_json::from_str::<String>(raw.get()) {
                Ok(text) if json::kind(raw) == Kind::String => {
                    push_json_string(out, &text.to_ascii_uppercase());
                }
                _ => out.push_str(json::text(raw)),
            }
        }
        (Value::Raw(raw), Transform::MajorUnits(currency)) => {
            let currency = match doc.coalesce(currency) {
                Value::Raw(c) => serde_json::from_str::<String>(c.get()).ok(),
                Value::Undefined | Value::Event => None,
            };
            if let Some(decimal) = currency
                .as_deref()
                .and_then(|c| major_units(json::text(raw), c))
            {
                write_member(out, first, rule.name);
                out.push_str(&decimal);
            }
        }
    }
}

/// `,"timestamp":"...","messageId":"..."`.
fn write_stamp(out: &mut String, timestamp: &str, message_id: &str) {
    out.push_str(r#","timestamp":""#);
    out.push_str(timestamp);
    out.push_str(r#"","messageId":""#);
    out.push_str(message_id);
    out.push('"');
}

/// Converts an integer minor-unit amount to a decimal literal in major units, exactly (string
/// arithmetic, no floating point). `None` unless `amount` is a plain integer literal and the
/// currency a three-letter code.
fn major_units(amount: &str, currency: &str) -> Option<String> {
    let code = currency.trim().to_ascii_uppercase();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (sign, digits) = match amount.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", amount),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let exponent = table::currency_exponent(&code) as usize;
    if exponent == 0 {
        return Some(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = exponent + 1);
    let (whole, fraction) = padded.split_at(padded.len() - exponent);
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    Some(format!("{sign}{whole}.{fraction}"))
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn mapper(profile: Profile) -> Mapper {
        Mapper::new(MappingConfig {
            profile,
            bridge_id: "bridge-1".into(),
            identify: true,
            extra_properties: vec![],
        })
        .unwrap()
    }

    fn delivery<'a>(event: &'a str, body: &'a str) -> Delivery<'a> {
        Delivery {
            event,
            body: body.as_bytes(),
            received_at: UNIX_EPOCH + Duration::from_millis(1_767_261_600_123),
            delivery_id: None,
        }
    }

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn seed_nullish_semantics() {
        let m = mapper(Profile::Seed);
        // serviceId null and service absent: the last operand (undefined) wins → omitted.
        // amount null, payment.amount null → null kept.
        let out = m
            .map(&delivery(
                "booking.created",
                r#"{"serviceId":null,"amount":null,"payment":{"amount":null},"slot":"x","location":null,"locationId":null}"#,
            ))
            .unwrap();
        assert_eq!(out.messages.len(), 1);
        let track = parse(&out.messages[0]);
        let props = track["properties"].as_object().unwrap();
        let keys: Vec<_> = props.keys().cloned().collect();
        assert_eq!(keys, ["amount", "seshnEvent"], "{props:?}");
        assert!(props["amount"].is_null());
        assert_eq!(track["userId"], "anonymous");
        assert_eq!(track["event"], "Seshn booking.created");
        assert_eq!(track["timestamp"], "2026-01-01T10:00:00.123Z");
    }

    #[test]
    fn ids_and_identify() {
        let m = mapper(Profile::Seed);
        let out = m
            .map(&delivery(
                "booking.created",
                r#"{"contact":{"id":12345678901234567890,"name":"Zoë","email":null}}"#,
            ))
            .unwrap();
        assert_eq!(out.messages.len(), 2);
        assert!(out.messages[0].contains(r#""userId":"12345678901234567890""#));
        let identify = parse(&out.messages[1]);
        assert_eq!(identify["userId"], "12345678901234567890");
        assert_eq!(identify["traits"], parse(r#"{"name":"Zoë","email":null}"#));
        assert_ne!(identify["messageId"], parse(&out.messages[0])["messageId"]);

        // A contact without an id: track only, userId falls back to contactId.
        let out = m
            .map(&delivery(
                "booking.created",
                r#"{"contact":{"name":"A"},"contactId":"c_9"}"#,
            ))
            .unwrap();
        assert_eq!(out.messages.len(), 1);
        assert_eq!(parse(&out.messages[0])["userId"], "c_9");
        // Unusable ids (bool, object, empty string) are skipped.
        for body in [
            r#"{"contact":{"id":true}}"#,
            r#"{"contact":{"id":{"x":1}}}"#,
            r#"{"contact":{"id":""}}"#,
            r#"{"contact":"c_1"}"#,
        ] {
            let out = m.map(&delivery("e", body)).unwrap();
            assert_eq!(out.messages.len(), 1, "{body}");
            assert_eq!(parse(&out.messages[0])["userId"], "anonymous", "{body}");
        }
    }

    /// `spec` without a contact: one anonymous user per booking (its payment events too), and
    /// per event when the payload names no id; never one shared "anonymous" for everybody.
    #[test]
    fn spec_anonymous_ids_are_stable_per_booking() {
        let m = mapper(Profile::Spec);
        let anon = |event: &str, body: &str| {
            let out = m.map(&delivery(event, body)).unwrap();
            let track = parse(&out.messages[0]);
            assert!(track.get("userId").is_none(), "{track}");
            track["anonymousId"].clone()
        };
        let created = anon("booking.created", r#"{"id":"bk_1"}"#);
        assert_eq!(created, "bk_1");
        assert_eq!(
            anon("payment.succeeded", r#"{"id":"pay_9","bookingId":"bk_1"}"#),
            created
        );
        assert_eq!(
            anon("booking.checked_in", r#"{"id":"bk_1","seats":2}"#),
            created
        );
        assert_eq!(anon("booking.created", r#"{"id":42}"#), "42");
        assert_eq!(anon("waitlist.joined", r#"{"id":"wl_3"}"#), "wl_3");
        // No id at all: the track's own message id (stable across retries of that event).
        let out = m
            .map(&delivery("booking.created", r#"{"seats":1}"#))
            .unwrap();
        let track = parse(&out.messages[0]);
        assert_eq!(track["anonymousId"], track["messageId"]);
        let other = anon("booking.created", r#"{"seats":2}"#);
        assert_ne!(track["anonymousId"], other);
        // Unusable ids are skipped like in the user id chain.
        assert_eq!(
            anon("payment.failed", r#"{"bookingId":"","id":"pay_1"}"#),
            "pay_1"
        );
        // A contact id still wins.
        let out = m
            .map(&delivery(
                "booking.created",
                r#"{"id":"bk_1","contactId":"c_1"}"#,
            ))
            .unwrap();
        assert_eq!(parse(&out.messages[0])["userId"], "c_1");
    }

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn message_ids_are_deterministic() {
        let m = mapper(Profile::Seed);
        let a = m
            .map(&delivery("booking.created", r#"{"id":"b"}"#))
            .unwrap();
        let mut later = delivery("booking.created", r#"{"id":"b"}"#);
        later.received_at += Duration::from_secs(5);
        let b = m.map(&later).unwrap();
        let id = |s: &str| parse(s)["messageId"].as_str().unwrap().to_owned();
        assert_eq!(id(&a.messages[0]), id(&b.messages[0]));
        let c = m
            .map(&delivery("booking.confirmed", r#"{"id":"b"}"#))
            .unwrap();
        assert_ne!(id(&a.messages[0]), id(&c.messages[0]));
        let other_bridge = Mapper::new(MappingConfig {
            bridge_id: "bridge-2".into(),
            ..MappingConfig::default()
        })
        .unwrap();
        let d = other_bridge
            .map(&delivery("booking.created", r#"{"id":"b"}"#))
            .unwrap();
        assert_ne!(id(&a.messages[0]), id(&d.messages[0]));
        let mut with_id = delivery("booking.created", r#"{"id":"b"}"#);
        with_id.delivery_id = Some("dlv_1");
        let e = m.map(&with_id).unwrap();
        let mut with_id_other_body = delivery("booking.created", r#"{"id":"c"}"#);
        with_id_other_body.delivery_id = Some("dlv_1");
        let f = m.map(&with_id_other_body).unwrap();
        assert_eq!(id(&e.messages[0]), id(&f.messages[0]));
        assert_ne!(id(&a.messages[0]), id(&e.messages[0]));
        assert!(id(&a.messages[0]).len() < 100);
    }

    #[test]
    fn major_units_exact() {
        assert_eq!(major_units("4000", "usd").as_deref(), Some("40.00"));
        assert_eq!(major_units("5", "EUR").as_deref(), Some("0.05"));
        assert_eq!(major_units("-1234", "eur").as_deref(), Some("-12.34"));
        assert_eq!(major_units("500", "JPY").as_deref(), Some("500"));
        assert_eq!(major_units("1", "KWD").as_deref(), Some("0.001"));
        assert_eq!(
            major_units("123456789012345678901", "usd").as_deref(),
            Some("1234567890123456789.01")
        );
        assert_eq!(major_units("1.5", "usd"), None);
        assert_eq!(major_units("\"4000\"", "usd"), None);
        assert_eq!(major_units("4000", "dollars"), None);
        assert_eq!(major_units("-", "usd"), None);
    }

    #[test]
    fn json_strings_escape() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        assert_eq!(
            serde_json::from_str::<String>(&s).unwrap(),
            "a\"b\\c\n\u{1}é"
        );
    }

    #[test]
    fn event_name_validation() {
        assert_eq!(validate_event_name(None), Err(MapError::EventMissing));
        assert_eq!(validate_event_name(Some(b"")), Err(MapError::EventInvalid));
        assert_eq!(
            validate_event_name(Some(b"  ")),
            Err(MapError::EventInvalid)
        );
        assert_eq!(
            validate_event_name(Some(&[b'a'; 257])),
            Err(MapError::EventInvalid)
        );
        assert_eq!(
            validate_event_name(Some(b"a\xffb")),
            Err(MapError::EventInvalid)
        );
        assert_eq!(
            validate_event_name(Some(b" booking.created ")),
            Ok("booking.created")
        );
    }

    #[test]
    fn extra_properties() {
        let m = Mapper::new(MappingConfig {
            profile: Profile::Seed,
            bridge_id: String::new(),
            identify: false,
            extra_properties: vec![
                "slotEnd=/slot/endTime".parse().unwrap(),
                "missing=/nope".parse().unwrap(),
            ],
        })
        .unwrap();
        let out = m
            .map(&delivery(
                "x",
                r#"{"slot":{"endTime":"2026-01-01T11:00:00Z"},"contact":{"id":"c"}}"#,
            ))
            .unwrap();
        assert_eq!(out.messages.len(), 1, "identify disabled");
        let track = parse(&out.messages[0]);
        assert_eq!(track["properties"]["slotEnd"], "2026-01-01T11:00:00Z");
        assert!(track["properties"].get("missing").is_none());
        assert!("bad".parse::<ExtraProperty>().is_err());
        assert!("a=b".parse::<ExtraProperty>().is_err());
        let clash = Mapper::new(MappingConfig {
            extra_properties: vec!["seats=/x".parse().unwrap()],
            ..MappingConfig::default()
        });
        assert_eq!(
            clash.unwrap_err(),
            ConfigError::ExtraPropertyClash("seats".into())
        );
    }
}
