//! The mapping as data: one table per profile.
//!
//! A table says, for every Segment property or trait, where its value comes from (a chain of
//! payload paths combined like JavaScript's `??`) and which events it applies to. The engine in
//! [`super`] interprets the tables; nothing about individual events is hard-coded elsewhere.

use std::borrow::Cow;

/// Where a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `payload.<name>`.
    Member(&'static str),
    /// `payload.<object>?.<name>`: undefined when `<object>` is absent, null or not an object.
    Nested(&'static str, &'static str),
    /// The `X-Webhook-Event` header value.
    EventName,
}

/// How a resolved value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Copied byte for byte.
    Copy,
    /// Strings are upper-cased (ISO 4217 codes); other values copied.
    Upper,
    /// An integer amount in minor units (cents) converted to a decimal in major units, using the
    /// currency resolved from these sources; omitted when either is unusable.
    MajorUnits(&'static [Source]),
}

/// Which events a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Every event.
    All,
    /// Events whose name starts with this prefix.
    Prefix(&'static str),
    /// Exactly these events.
    Events(&'static [&'static str]),
}

impl Applies {
    /// Whether the rule applies to `event`.
    pub fn matches(self, event: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => event.starts_with(prefix),
            Self::Events(events) => events.contains(&event),
        }
    }
}

/// One output property (or trait).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Property name in the Segment message.
    pub name: &'static str,
    /// `a ?? b ?? c`: the first value that is neither null nor absent, else the last operand's
    /// value (null is written as null, absent is omitted).
    pub sources: &'static [Source],
    /// How the value is written.
    pub transform: Transform,
    /// Events the rule applies to.
    pub applies: Applies,
    /// JSON Schema of the written value, for the tracking plan.
    pub schema: &'static str,
}

/// What the track call carries when the payload has no usable user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `userId: "<value>"` (the seed's `?? 'anonymous'`).
    UserId(&'static str),
    /// `anonymousId`: the first usable id from these sources (so every event of one booking
    /// lands on one anonymous user), else the track's own message id (one anonymous user per
    /// event, stable across retries; never one shared value that merges strangers).
    AnonymousId(&'static [Source]),
}

/// A mapping profile as data.
#[derive(Debug)]
pub struct Table {
    /// Profile name as used on the command line.
    pub name: &'static str,
    /// Segment event name for a Seshn event name.
    pub event_name: fn(&str) -> Cow<'_, str>,
    /// Chain for the user id (`contact?.id ?? contactId`); values that are not usable ids
    /// (not a non-empty string or a number) are skipped.
    pub user_id: &'static [Source],
    /// Used when no source yields a usable id.
    pub fallback: Fallback,
    /// Track properties, in output order.
    pub properties: &'static [Rule],
    /// Identify traits (read from `contact`), in output order.
    pub traits: &'static [Rule],
}

const ID: &str = r#"{"type":["string","number","null"]}"#;
const STRING: &str = r#"{"type":["string","null"]}"#;
const INTEGER: &str = r#"{"type":["integer","null"]}"#;
const NUMBER: &str = r#"{"type":["number","null"]}"#;
const DATE_TIME: &str = r#"{"type":["string","null"],"format":"date-time"}"#;
const EVENT: &str = r#"{"type":"string"}"#;

const fn rule(name: &'static str, sources: &'static [Source], schema: &'static str) -> Rule {
    Rule {
        name,
        sources,
        transform: Transform::Copy,
        applies: Applies::All,
        schema,
    }
}

use Source::{EventName, Member, Nested};

const CONTACT_ID: &[Source] = &[Nested("contact", "id"), Member("contactId")];
const AMOUNT: &[Source] = &[Member("amount"), Nested("payment", "amount")];
const CURRENCY: &[Source] = &[Member("currency"), Nested("payment", "currency")];

const TRAITS: &[Rule] = &[
    rule("name", &[Nested("contact", "name")], STRING),
    rule("email", &[Nested("contact", "email")], STRING),
    rule("phone", &[Nested("contact", "phone")], STRING),
];

/// `seed`: exactly the properties of Seshn's documented Next.js handler, in its order.
pub static SEED: Table = Table {
    name: "seed",
    event_name: seed_event_name,
    user_id: CONTACT_ID,
    fallback: Fallback::UserId("anonymous"),
    properties: &[
        rule("bookingId", &[Member("id")], ID),
        rule(
            "serviceId",
            &[Member("serviceId"), Nested("service", "id")],
            ID,
        ),
        rule("serviceName", &[Nested("service", "name")], STRING),
        rule("seats", &[Member("seats")], INTEGER),
        rule("amount", AMOUNT, NUMBER),
        rule("currency", CURRENCY, STRING),
        rule("slotStartTime", &[Nested("slot", "startTime")], DATE_TIME),
        rule(
            "locationId",
            &[Member("locationId"), Nested("location", "id")],
            ID,
        ),
        rule("seshnEvent", &[EventName], EVENT),
    ],
    traits: TRAITS,
};

/// Events mapped to Segment's e-commerce spec (`Order ...`), carrying `order_id` and `total`.
const ORDER_EVENTS: &[&str] = &["payment.succeeded", "payment.refunded", "booking.cancelled"];

/// `spec`: Segment's naming spec (Title Case Object Action, snake_case, reserved properties).
pub static SPEC: Table = Table {
    name: "spec",
    event_name: spec_event_name,
    user_id: CONTACT_ID,
    // A payment names its booking in `bookingId`; a booking is its own `id`.
    fallback: Fallback::AnonymousId(&[Member("bookingId"), Member("id")]),
    properties: &[
        Rule {
            applies: Applies::Events(ORDER_EVENTS),
            ..rule("order_id", &[Member("bookingId"), Member("id")], ID)
        },
        Rule {
            applies: Applies::Prefix("booking."),
            ..rule("booking_id", &[Member("id")], ID)
        },
        Rule {
            applies: Applies::Prefix("payment."),
            ..rule("booking_id", &[Member("bookingId")], ID)
        },
        Rule {
            applies: Applies::Prefix("payment."),
            ..rule("payment_id", &[Member("id")], ID)
        },
        rule("seshn_id", &[Member("id")], ID),
        rule("contact_id", CONTACT_ID, ID),
        rule(
            "service_id",
            &[Member("serviceId"), Nested("service", "id")],
            ID,
        ),
        rule("service_name", &[Nested("service", "name")], STRING),
        rule("seats", &[Member("seats")], INTEGER),
        Rule {
            transform: Transform::MajorUnits(CURRENCY),
            applies: Applies::Events(ORDER_EVENTS),
            ..rule("total", AMOUNT, NUMBER)
        },
        Rule {
            transform: Transform::MajorUnits(CURRENCY),
            applies: Applies::Events(&["payment.succeeded"]),
            ..rule("revenue", AMOUNT, NUMBER)
        },
        rule("amount", AMOUNT, NUMBER),
        Rule {
            transform: Transform::Upper,
            ..rule("currency", CURRENCY, STRING)
        },
        rule("slot_start_time", &[Nested("slot", "startTime")], DATE_TIME),
        rule(
            "location_id",
            &[Member("locationId"), Nested("location", "id")],
            ID,
        ),
        rule("reason", &[Member("reason")], STRING),
        rule("seshn_event", &[EventName], EVENT),
    ],
    traits: TRAITS,
};

/// `Seshn <event>`, as the seed's template literal.
fn seed_event_name(event: &str) -> Cow<'_, str> {
    Cow::Owned(format!("Seshn {event}"))
}

/// Title Case Object Action; three events use Segment's e-commerce names.
pub fn spec_event_name(event: &str) -> Cow<'_, str> {
    match event {
        "payment.succeeded" => Cow::Borrowed("Order Completed"),
        "payment.refunded" => Cow::Borrowed("Order Refunded"),
        "booking.cancelled" => Cow::Borrowed("Order Cancelled"),
        _ => {
            let mut out = String::with_capacity(event.len() + 4);
            for word in event
                .split(['.', '_', '-', ' '])
                .filter(|word| !word.is_empty())
            {
                if !out.is_empty() {
                    out.push(' ');
                }
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(chars.as_str());
                }
            }
            if out.is_empty() {
                // A name made only of separators: keep it recognisable rather than empty.
                Cow::Owned(format!("Seshn {event}"))
            } else {
                Cow::Owned(out)
            }
        }
    }
}

/// The 16 events the seed's registration subscribes to (DESIGN 4.1).
pub const SUBSCRIBED_EVENTS: [&str; 16] = [
    "booking.created",
    "booking.confirmed",
    "booking.cancelled",
    "booking.rescheduled",
    "booking.checked_in",
    "booking.hold_expired",
    "booking.series_created",
    "booking.series_cancelled",
    "payment.succeeded",
    "payment.failed",
    "payment.refunded",
    "entitlement.issued",
    "entitlement.expired",
    "waitlist.joined",
    "waitlist.promoted",
    "waitlist.expired",
];

/// Events Seshn's pages name beyond the seed's subscription.
pub const OTHER_KNOWN_EVENTS: [&str; 2] = ["booking.completed", "booking.no_show"];

/// Digits after the decimal point of an ISO 4217 currency (upper case); 2 unless listed.
pub fn currency_exponent(code: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if ZERO.contains(&code) {
        0
    } else if THREE.contains(&code) {
        3
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names() {
        let names: Vec<_> = SUBSCRIBED_EVENTS
            .iter()
            .map(|e| spec_event_name(e).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "Booking Created",
                "Booking Confirmed",
                "Order Cancelled",
                "Booking Rescheduled",
                "Booking Checked In",
                "Booking Hold Expired",
                "Booking Series Created",
                "Booking Series Cancelled",
                "Order Completed",
                "Payment Failed",
                "Order Refunded",
                "Entitlement Issued",
                "Entitlement Expired",
                "Waitlist Joined",
                "Waitlist Promoted",
                "Waitlist Expired",
            ]
        );
        assert_eq!(spec_event_name("booking.no_show"), "Booking No Show");
        assert_eq!(spec_event_name("..."), "Seshn ...");
        assert_eq!(seed_event_name("x.y"), "Seshn x.y");
    }

    #[test]
    fn spec_rules_with_one_name_never_overlap() {
        for event in SUBSCRIBED_EVENTS.iter().chain(OTHER_KNOWN_EVENTS.iter()) {
            let mut seen = std::collections::HashSet::new();
            for rule in SPEC.properties.iter().filter(|r| r.applies.matches(event)) {
                assert!(seen.insert(rule.name), "{event}: {} twice", rule.name);
            }
        }
    }

    #[test]
    fn schemas_are_json() {
        for rule in SEED.properties.iter().chain(SPEC.properties).chain(TRAITS) {
            serde_json::from_str::<serde_json::Value>(rule.schema).unwrap();
        }
    }
}
