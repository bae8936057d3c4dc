//! Checks Segment applies to each message after answering 200 (so a failure there is silent).
//!
//! Validating before sending turns those silent drops into counted dead letters.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// `messageId` must be shorter than this many characters (Segment HTTP API docs).
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// Why Segment would drop a message. The text names the rule, never the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// Not a JSON object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// `type` is missing or not one of identify, track, page, screen, group, alias.
    #[error("message has no valid `type`")]
    BadType,
    /// `messageId` is missing, empty or not a string.
    #[error("message has no `messageId`")]
    MissingMessageId,
    /// `messageId` has 100 characters or more.
    #[error("`messageId` must be shorter than 100 characters")]
    MessageIdTooLong,
    /// Neither `userId` nor `anonymousId` is set.
    #[error("message needs a `userId` or an `anonymousId`")]
    MissingIdentity,
    /// A track without a non-empty string `event`.
    #[error("track message needs an `event` name")]
    MissingEvent,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

/// Checks a serialised message against Segment's per-message rules (type, messageId,
/// userId/anonymousId, event on track). Size is the [`crate::BatchBuilder`]'s job.
pub fn validate_message(message: &RawValue) -> Result<(), InvalidMessage> {
    let text = message.get();
    if !text.trim_start().starts_with('{') {
        return Err(InvalidMessage::NotAnObject);
    }
    // A field of the wrong JSON type (e.g. a numeric `type`) fails this parse; attribute it
    // field by field so the reason stays precise.
    let f: Fields<'_> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(_) => return Err(wrong_typed_field(text)),
    };
    let kind = f.kind.ok_or(InvalidMessage::BadType)?;
    if !matches!(
        &*kind,
        "identify" | "track" | "page" | "screen" | "group" | "alias"
    ) {
        return Err(InvalidMessage::BadType);
    }
    let id = f.message_id.ok_or(InvalidMessage::MissingMessageId)?;
    if id.is_empty() {
        return Err(InvalidMessage::MissingMessageId);
    }
    if id.chars().count() >= MAX_MESSAGE_ID_CHARS {
        return Err(InvalidMessage::MessageIdTooLong);
    }
    let present = |v: Option<&RawValue>| v.is_some_and(|v| !matches!(v.get(), "null" | "\"\""));
    if !present(f.user_id) && !present(f.anonymous_id) {
        return Err(InvalidMessage::MissingIdentity);
    }
    if kind == "track" && f.event.as_deref().is_none_or(str::is_empty) {
        return Err(InvalidMessage::MissingEvent);
    }
    Ok(())
}

/// Names the first checked field whose JSON type is wrong.
fn wrong_typed_field(text: &str) -> InvalidMessage {
    let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) else {
        return InvalidMessage::NotAnObject;
    };
    let not_string = |k: &str| map.get(k).is_some_and(|v| !v.is_string() && !v.is_null());
    if not_string("type") {
        InvalidMessage::BadType
    } else if not_string("messageId") {
        InvalidMessage::MissingMessageId
    } else {
        InvalidMessage::MissingEvent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(), InvalidMessage> {
        validate_message(&RawValue::from_string(s.to_owned()).unwrap())
    }

    #[test]
    fn rules() {
        assert_eq!(
            check(r#"{"type":"track","event":"E","messageId":"m","userId":"u"}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"type":"identify","messageId":"m","anonymousId":"a"}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"type":"track","event":"E","messageId":"m","userId":7}"#),
            Ok(())
        );
        assert_eq!(check("[1]"), Err(InvalidMessage::NotAnObject));
        assert_eq!(check(r#""x""#), Err(InvalidMessage::NotAnObject));
        assert_eq!(
            check(r#"{"messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::BadType)
        );
        assert_eq!(
            check(r#"{"type":"Track","messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::BadType)
        );
        assert_eq!(
            check(r#"{"type":1,"messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::BadType)
        );
        assert_eq!(
            check(r#"{"type":"identify","userId":"u"}"#),
            Err(InvalidMessage::MissingMessageId)
        );
        assert_eq!(
            check(r#"{"type":"identify","messageId":5,"userId":"u"}"#),
            Err(InvalidMessage::MissingMessageId)
        );
        assert_eq!(
            check(r#"{"type":"identify","messageId":"","userId":"u"}"#),
            Err(InvalidMessage::MissingMessageId)
        );
        let id99 = format!(
            r#"{{"type":"identify","messageId":"{}","userId":"u"}}"#,
            "é".repeat(99)
        );
        assert_eq!(check(&id99), Ok(()));
        let id100 = format!(
            r#"{{"type":"identify","messageId":"{}","userId":"u"}}"#,
            "x".repeat(100)
        );
        assert_eq!(check(&id100), Err(InvalidMessage::MessageIdTooLong));
        assert_eq!(
            check(r#"{"type":"identify","messageId":"m"}"#),
            Err(InvalidMessage::MissingIdentity)
        );
        assert_eq!(
            check(r#"{"type":"identify","messageId":"m","userId":null,"anonymousId":""}"#),
            Err(InvalidMessage::MissingIdentity)
        );
        assert_eq!(
            check(r#"{"type":"track","messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::MissingEvent)
        );
        assert_eq!(
            check(r#"{"type":"track","event":"","messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::MissingEvent)
        );
        assert_eq!(
            check(r#"{"type":"track","event":3,"messageId":"m","userId":"u"}"#),
            Err(InvalidMessage::MissingEvent)
        );
        // Escapes inside checked strings are decoded before comparing.
        assert_eq!(
            check(r#"{"type":"tr\u0061ck","event":"E","messageId":"m","userId":"u"}"#),
            Ok(())
        );
    }
}
