//! The fake's state and the semantics of each call, without HTTP: tenants (one per API key),
//! webhooks, idempotency records. Every function returns the [`Reply`] the server sends.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// Prefix of webhook ids (`wh_<n>`).
const ID_PREFIX: &str = "wh_";
/// Default and maximum page sizes of list.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;

/// A webhook as the fake stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeWebhook {
    /// `wh_<n>`.
    pub id: String,
    /// Delivery URL.
    pub url: String,
    /// Subscribed events (empty = all).
    pub events: Vec<String>,
    /// Signing secret (the one sent on create, or a generated one).
    pub secret: String,
    /// Whether Seshn delivers to it. Nothing in the assumed API changes it (no field in create
    /// or update); only [`super::FakeSeshn::set_webhook_enabled_out_of_band`] does, as someone
    /// in Seshn's dashboard would.
    pub enabled: bool,
    /// Optional description.
    pub description: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

impl FakeWebhook {
    /// The JSON representation; `with_secret` only for the answer to create.
    fn to_json(&self, with_secret: bool) -> Value {
        let mut obj = Map::new();
        obj.insert("id".into(), json!(self.id));
        obj.insert("url".into(), json!(self.url));
        obj.insert("events".into(), json!(self.events));
        obj.insert("enabled".into(), json!(self.enabled));
        if let Some(d) = &self.description {
            obj.insert("description".into(), json!(d));
        }
        obj.insert("createdAt".into(), json!(self.created_at));
        if with_secret {
            obj.insert("secret".into(), json!(self.secret));
        }
        Value::Object(obj)
    }
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    /// Set on an idempotent replay (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: Some(body),
            replayed: false,
        }
    }

    /// `{error: {type, message}}`.
    pub(crate) fn error(status: u16, kind: &str, message: &str) -> Self {
        Reply {
            status,
            body: Some(json!({"error": {"type": kind, "message": message}})),
            replayed: false,
        }
    }

    fn no_content() -> Self {
        Reply {
            status: 204,
            body: None,
            replayed: false,
        }
    }

    fn not_found() -> Self {
        Self::error(404, "not_found", "no such webhook")
    }
}

/// One API key's world.
#[derive(Debug, Default)]
struct Tenant {
    valid: bool,
    forbidden: bool,
    /// Keyed by the numeric part of the id: creation order, which list pages by.
    webhooks: BTreeMap<u64, FakeWebhook>,
    /// Idempotency key → (request body, answer body).
    idempotency: HashMap<String, (Value, Value)>,
}

/// All tenants.
#[derive(Debug)]
pub(crate) struct Store {
    tenants: HashMap<String, Tenant>,
    next_id: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            tenants: HashMap::new(),
            next_id: 1,
        }
    }
}

fn id_number(id: &str) -> Option<u64> {
    id.strip_prefix(ID_PREFIX)?.parse().ok()
}

impl Store {
    /// Adds (or re-enables) a key.
    pub fn add_key(&mut self, key: &str) {
        let tenant = self.tenants.entry(key.to_owned()).or_default();
        tenant.valid = true;
    }

    /// Marks a key valid or revoked (401); unknown keys are added.
    pub fn set_key_valid(&mut self, key: &str, valid: bool) {
        self.tenants.entry(key.to_owned()).or_default().valid = valid;
    }

    /// Marks a key as lacking permission (403); unknown keys are added as valid.
    pub fn set_key_forbidden(&mut self, key: &str, forbidden: bool) {
        let tenant = self
            .tenants
            .entry(key.to_owned())
            .or_insert_with(|| Tenant {
                valid: true,
                ..Tenant::default()
            });
        tenant.forbidden = forbidden;
    }

    /// The key's webhooks in creation order.
    pub fn webhooks(&self, key: &str) -> Vec<FakeWebhook> {
        self.tenants
            .get(key)
            .map(|t| t.webhooks.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of webhooks across all keys.
    pub fn total(&self) -> usize {
        self.tenants.values().map(|t| t.webhooks.len()).sum()
    }

    /// Removes a webhook whoever owns it; true if it existed.
    pub fn delete_out_of_band(&mut self, id: &str) -> bool {
        let Some(n) = id_number(id) else {
            return false;
        };
        self.tenants
            .values_mut()
            .any(|t| t.webhooks.remove(&n).is_some())
    }

    /// Disables or enables a webhook whoever owns it; true if it existed.
    pub fn set_enabled_out_of_band(&mut self, id: &str, enabled: bool) -> bool {
        let Some(n) = id_number(id) else {
            return false;
        };
        let mut found = false;
        for hook in self
            .tenants
            .values_mut()
            .filter_map(|t| t.webhooks.get_mut(&n))
        {
            hook.enabled = enabled;
            found = true;
        }
        found
    }

    /// Stores a webhook for `key` as if created elsewhere (Seshn's dashboard).
    pub fn insert_out_of_band(&mut self, key: &str, url: &str, events: &[String]) -> FakeWebhook {
        let hook = self.new_webhook(url.to_owned(), events.to_vec(), None, None);
        self.tenants
            .entry(key.to_owned())
            .or_default()
            .webhooks
            .insert(self.next_id - 1, hook.clone());
        hook
    }

    fn new_webhook(
        &mut self,
        url: String,
        events: Vec<String>,
        description: Option<String>,
        secret: Option<String>,
    ) -> FakeWebhook {
        let n = self.next_id;
        self.next_id += 1;
        FakeWebhook {
            id: format!("{ID_PREFIX}{n}"),
            url,
            events,
            secret: secret.unwrap_or_else(|| generate_secret(n)),
            enabled: true,
            description,
            created_at: rfc3339_now(),
        }
    }

    /// Checks the bearer key: the tenant, or the 401/403 answer.
    fn tenant(&mut self, key: Option<&str>) -> Result<&mut Tenant, Reply> {
        let unauthorized = || Reply::error(401, "unauthorized", "invalid or missing API key");
        let tenant = key
            .and_then(|k| self.tenants.get_mut(k))
            .filter(|t| t.valid)
            .ok_or_else(unauthorized)?;
        if tenant.forbidden {
            return Err(Reply::error(
                403,
                "forbidden",
                "this API key may not manage webhooks",
            ));
        }
        Ok(tenant)
    }

    /// `POST /v1/webhooks`.
    pub fn create(
        &mut self,
        key: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> Reply {
        if let Err(reply) = self.tenant(key) {
            return reply;
        }
        let (request, obj) = match parse_object(body) {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        let fields = (|| {
            let url = check_url(obj.get("url"), true)?.unwrap_or_default();
            let events = check_events(obj.get("events"), true)?.unwrap_or_default();
            let description = check_opt_string(obj.get("description"), "description", true)?;
            let secret = check_opt_string(obj.get("secret"), "secret", false)?;
            Ok::<_, Reply>((url, events, description, secret))
        })();
        let (url, events, description, secret) = match fields {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        if let Some(idem) = idempotency_key {
            let Ok(tenant) = self.tenant(key) else {
                return Reply::error(500, "server_error", "tenant vanished");
            };
            if let Some((stored_request, stored_answer)) = tenant.idempotency.get(idem) {
                if *stored_request == request {
                    return Reply {
                        status: 201,
                        body: Some(stored_answer.clone()),
                        replayed: true,
                    };
                }
                return Reply::error(
                    409,
                    "idempotency_conflict",
                    "Idempotency-Key was already used with a different request body",
                );
            }
        }
        let hook = self.new_webhook(url, events, description, secret);
        let n = self.next_id - 1;
        let answer = hook.to_json(true);
        let Ok(tenant) = self.tenant(key) else {
            return Reply::error(500, "server_error", "tenant vanished");
        };
        tenant.webhooks.insert(n, hook);
        if let Some(idem) = idempotency_key {
            tenant
                .idempotency
                .insert(idem.to_owned(), (request, answer.clone()));
        }
        Reply::ok(201, answer)
    }

    /// `GET /v1/webhooks/{id}`.
    pub fn get(&mut self, key: Option<&str>, id: &str) -> Reply {
        let tenant = match self.tenant(key) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        match id_number(id).and_then(|n| tenant.webhooks.get(&n)) {
            Some(hook) => Reply::ok(200, hook.to_json(false)),
            None => Reply::not_found(),
        }
    }

    /// `GET /v1/webhooks?limit=&starting_after=`.
    pub fn list(&mut self, key: Option<&str>, query: &HashMap<String, String>) -> Reply {
        let tenant = match self.tenant(key) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let limit = match query.get("limit") {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Reply::error(
                        400,
                        "invalid_request",
                        "limit must be an integer from 1 to 100",
                    );
                }
            },
        };
        let after = match query.get("starting_after") {
            None => 0,
            Some(raw) => match id_number(raw) {
                Some(n) => n,
                None => {
                    return Reply::error(
                        400,
                        "invalid_request",
                        "starting_after must be a webhook id",
                    );
                }
            },
        };
        let mut rest = tenant
            .webhooks
            .range(after.saturating_add(1)..)
            .map(|(_, hook)| hook);
        let data: Vec<Value> = rest
            .by_ref()
            .take(limit)
            .map(|h| h.to_json(false))
            .collect();
        let has_more = rest.next().is_some();
        Reply::ok(200, json!({"data": data, "hasMore": has_more}))
    }

    /// `PATCH /v1/webhooks/{id}`.
    pub fn update(&mut self, key: Option<&str>, id: &str, body: &[u8]) -> Reply {
        let tenant = match self.tenant(key) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let Some(hook) = id_number(id).and_then(|n| tenant.webhooks.get_mut(&n)) else {
            return Reply::not_found();
        };
        let (_, obj) = match parse_object(body) {
            Ok(v) => v,
            Err(reply) => return reply,
        };
        let fields = (|| {
            let url = check_url(obj.get("url"), false)?;
            let events = check_events(obj.get("events"), false)?;
            Ok::<_, Reply>((url, events))
        })();
        let (url, events) = match fields {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        if let Some(url) = url {
            hook.url = url;
        }
        if let Some(events) = events {
            hook.events = events;
        }
        Reply::ok(200, hook.to_json(false))
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub fn delete(&mut self, key: Option<&str>, id: &str) -> Reply {
        let tenant = match self.tenant(key) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        match id_number(id).and_then(|n| tenant.webhooks.remove(&n)) {
            Some(_) => Reply::no_content(),
            None => Reply::not_found(),
        }
    }

    /// Auth check alone, for routes that do not exist (so an unknown key still sees 401).
    pub fn authorize(&mut self, key: Option<&str>) -> Result<(), Reply> {
        self.tenant(key).map(|_| ())
    }
}

/// Parses a JSON object body: `(whole value, object)` or a 400.
fn parse_object(body: &[u8]) -> Result<(Value, Map<String, Value>), Reply> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Reply::error(400, "invalid_request", "body must be valid JSON"))?;
    match &value {
        Value::Object(obj) => {
            let obj = obj.clone();
            Ok((value, obj))
        }
        _ => Err(Reply::error(
            400,
            "invalid_request",
            "body must be a JSON object",
        )),
    }
}

fn check_url(value: Option<&Value>, required: bool) -> Result<Option<String>, Reply> {
    match value {
        None | Some(Value::Null) if required => {
            Err(Reply::error(400, "invalid_request", "url is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if is_http_url(s) => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(Reply::error(
            422,
            "validation_error",
            "url must be an absolute http(s) URL",
        )),
        Some(_) => Err(Reply::error(400, "invalid_request", "url must be a string")),
    }
}

fn is_http_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty()
        && s.len() <= MAX_URL_LEN
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_events(value: Option<&Value>, required: bool) -> Result<Option<Vec<String>>, Reply> {
    let not_strings = || Reply::error(400, "invalid_request", "events must be an array of strings");
    match value {
        None | Some(Value::Null) if required => {
            Err(Reply::error(400, "invalid_request", "events is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut events = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(not_strings());
                };
                if s.trim().is_empty() {
                    return Err(Reply::error(
                        422,
                        "validation_error",
                        "event names must not be empty",
                    ));
                }
                events.push(s.clone());
            }
            Ok(Some(events))
        }
        Some(_) => Err(not_strings()),
    }
}

fn check_opt_string(
    value: Option<&Value>,
    name: &str,
    allow_empty: bool,
) -> Result<Option<String>, Reply> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() && !allow_empty => Err(Reply::error(
            422,
            "validation_error",
            &format!("{name} must not be empty"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reply::error(
            400,
            "invalid_request",
            &format!("{name} must be a string"),
        )),
    }
}

/// 32 random bytes as hex. Not cryptographic: it is a fake's secret, never a real one.
fn generate_secret(n: u64) -> String {
    let mut out = String::with_capacity(64);
    for i in 0..4u64 {
        // Each RandomState gets fresh keys, so consecutive secrets differ.
        let word = RandomState::new().hash_one((n, i));
        let _ = write!(out, "{word:016x}");
    }
    out
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDThh:mm:ssZ` (Howard Hinnant's civil-from-days).
fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_763_199), "2025-12-03T11:59:59Z");
    }

    #[test]
    fn secrets_are_hex_and_distinct() {
        let a = generate_secret(1);
        let b = generate_secret(1);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn urls() {
        assert!(is_http_url("https://hooks.example.com/hooks/abc"));
        assert!(is_http_url("http://127.0.0.1:8080"));
        assert!(!is_http_url("ftp://x"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https:///path"));
        assert!(!is_http_url("https://a b"));
    }

    #[test]
    fn tenants_are_isolated() {
        let mut s = Store::default();
        s.add_key("a");
        s.add_key("b");
        let r = s.create(Some("a"), None, br#"{"url":"https://x/1","events":[]}"#);
        assert_eq!(r.status, 201);
        let id = r.body.unwrap()["id"].as_str().unwrap().to_owned();
        assert_eq!(s.get(Some("b"), &id).status, 404);
        assert_eq!(s.delete(Some("b"), &id).status, 404);
        assert_eq!(s.get(Some("a"), &id).status, 200);
        assert_eq!(s.get(Some("c"), &id).status, 401);
        assert_eq!(s.get(None, &id).status, 401);
    }
}
