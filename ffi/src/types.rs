//! Plain data crossing the boundary: string and byte views, headers, messages, events.

use std::{ffi::c_char, ffi::CStr, time::UNIX_EPOCH};

use polybus_core::{Error, ErrorKind, Event, Message, Result};

/// @brief A view of UTF-8 text: `len` bytes at `ptr`, not NUL-terminated.
///
/// In inputs it is borrowed for the call only. `ptr == NULL` means "absent" (for optional
/// fields such as a key). polybus_str_from_cstr() makes one from a C string.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct polybus_str_t {
    /// The first byte, or NULL when absent.
    pub ptr: *const c_char,
    /// Length in bytes.
    pub len: usize,
}

/// @brief A view of bytes: `len` bytes at `ptr` (which may be NULL when `len` is 0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct polybus_bytes_t {
    /// The first byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// @brief One header: a name and a value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct polybus_header_t {
    /// Header name (visible ASCII, no ':').
    pub name: polybus_str_t,
    /// Header value (no CR, LF or NUL).
    pub value: polybus_str_t,
}

/// @brief An event to publish. Zero-initialise it, then set `topic` and `payload`.
///
/// Every field is borrowed for the duration of the call only; polybus copies what it keeps.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct polybus_message_t {
    /// The topic, e.g. "orders.created" (required).
    pub topic: polybus_str_t,
    /// The payload, passed through untouched.
    pub payload: polybus_bytes_t,
    /// The ordering key, or `{NULL, 0}` for none.
    pub key: polybus_str_t,
    /// Headers, or NULL when `headers_len` is 0.
    pub headers: *const polybus_header_t,
    /// Number of headers.
    pub headers_len: usize,
    /// The event id, or `{NULL, 0}` for a new UUIDv7.
    pub id: polybus_str_t,
    /// The event type, or `{NULL, 0}` for the topic.
    pub r#type: polybus_str_t,
    /// The event time in nanoseconds since the Unix epoch, or 0 for now.
    pub time_unix_ns: i64,
    /// POLYBUS_MESSAGE_* flags, or 0.
    pub flags: u32,
}

/// polybus_message_t flag: the payload is JSON text the caller encoded from a value; the core
/// marks it as such on the wire (`content-type: application/json`, unless a `content-type`
/// header is given), the same for every language.
pub const POLYBUS_MESSAGE_JSON: u32 = 1;

/// @brief A delivered event: views valid until the callback returns, or until its batch is
/// acknowledged or freed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct polybus_event_t {
    /// The topic it was published on.
    pub topic: polybus_str_t,
    /// The payload.
    pub payload: polybus_bytes_t,
    /// The ordering key; `ptr` is NULL when there is none.
    pub key: polybus_str_t,
    /// The event id.
    pub id: polybus_str_t,
    /// The event type.
    pub r#type: polybus_str_t,
    /// The publishing service's name; `ptr` is NULL when unknown (as for `key`).
    pub source: polybus_str_t,
    /// The headers.
    pub headers: *const polybus_header_t,
    /// Number of headers.
    pub headers_len: usize,
    /// Publish time, nanoseconds since the Unix epoch.
    pub time_unix_ns: i64,
    /// Delivery attempt: 1 on first delivery.
    pub attempt: u32,
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidArgument, msg)
}

impl polybus_str_t {
    pub(crate) const NONE: polybus_str_t = polybus_str_t {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub(crate) fn of(s: &str) -> polybus_str_t {
        polybus_str_t {
            ptr: s.as_ptr().cast(),
            len: s.len(),
        }
    }

    /// Reads an optional view as UTF-8.
    ///
    /// SAFETY: `ptr` is NULL or valid for `len` bytes during the call.
    pub(crate) unsafe fn get(&self, what: &str) -> Result<Option<&str>> {
        if self.ptr.is_null() {
            return Ok(None);
        }
        let bytes = std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len);
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
    }

    /// Reads a required view as UTF-8.
    pub(crate) unsafe fn required(&self, what: &str) -> Result<&str> {
        self.get(what)?
            .ok_or_else(|| invalid(format!("{what} is NULL")))
    }
}

/// Reads an optional NUL-terminated string as UTF-8.
///
/// SAFETY: `ptr` is NULL or a valid NUL-terminated string.
pub(crate) unsafe fn cstr_opt<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map(Some)
        .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// Reads a required NUL-terminated string as UTF-8.
pub(crate) unsafe fn cstr<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    cstr_opt(ptr, what)?.ok_or_else(|| invalid(format!("{what} is NULL")))
}

impl polybus_message_t {
    /// Copies the message into the core's type.
    ///
    /// SAFETY: every pointer is NULL or valid as documented on the struct.
    pub(crate) unsafe fn to_message(self) -> Result<Message> {
        let topic = self.topic.required("message topic")?;
        let payload: &[u8] = if self.payload.len == 0 {
            &[]
        } else if self.payload.ptr.is_null() {
            return Err(invalid(
                "message payload is NULL with a non-zero length".into(),
            ));
        } else {
            std::slice::from_raw_parts(self.payload.ptr, self.payload.len)
        };
        let mut m = Message::new(topic, payload.to_vec());
        if self.flags & !POLYBUS_MESSAGE_JSON != 0 {
            return Err(invalid(format!(
                "message flags {:#x} has unknown bits",
                self.flags
            )));
        }
        if let Some(k) = self.key.get("message key")? {
            m = m.key(k);
        }
        if let Some(id) = self.id.get("message id")? {
            m = m.id(id);
        }
        if let Some(t) = self.r#type.get("message type")? {
            m = m.event_type(t);
        }
        if self.time_unix_ns != 0 {
            let ns = u64::try_from(self.time_unix_ns).map_err(|_| {
                invalid(format!(
                    "message time_unix_ns {} is before 1970",
                    self.time_unix_ns
                ))
            })?;
            m = m.time(UNIX_EPOCH + std::time::Duration::from_nanos(ns));
        }
        if self.headers_len > 0 {
            if self.headers.is_null() {
                return Err(invalid(
                    "message headers is NULL with a non-zero headers_len".into(),
                ));
            }
            for h in std::slice::from_raw_parts(self.headers, self.headers_len) {
                m = m.header(
                    h.name.required("header name")?,
                    h.value.required("header value")?,
                );
            }
        }
        if self.flags & POLYBUS_MESSAGE_JSON != 0 {
            m = m.json_encoded();
        }
        Ok(m)
    }
}

/// An event's views plus the header array they point into.
pub(crate) struct EventView {
    pub(crate) event: polybus_event_t,
    _headers: Vec<polybus_header_t>,
}

impl EventView {
    /// Views of `e`; valid while `e` is alive and unmoved (its data lives behind an `Arc`).
    pub(crate) fn new(e: &Event) -> EventView {
        let headers: Vec<polybus_header_t> = e
            .headers()
            .iter()
            .map(|(k, v)| polybus_header_t {
                name: polybus_str_t::of(k),
                value: polybus_str_t::of(v),
            })
            .collect();
        let time = e
            .time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let event = polybus_event_t {
            topic: polybus_str_t::of(e.topic()),
            payload: polybus_bytes_t {
                ptr: e.payload().as_ptr(),
                len: e.payload().len(),
            },
            key: e.key().map_or(polybus_str_t::NONE, polybus_str_t::of),
            id: polybus_str_t::of(e.id()),
            r#type: polybus_str_t::of(e.event_type()),
            source: e.source().map_or(polybus_str_t::NONE, polybus_str_t::of),
            headers: if headers.is_empty() {
                std::ptr::null()
            } else {
                headers.as_ptr()
            },
            headers_len: headers.len(),
            time_unix_ns: time,
            attempt: e.attempt(),
        };
        EventView {
            event,
            _headers: headers,
        }
    }
}

/// @brief A view of a NUL-terminated C string (NULL gives the absent view).
#[no_mangle]
pub unsafe extern "C" fn polybus_str_from_cstr(s: *const c_char) -> polybus_str_t {
    if s.is_null() {
        return polybus_str_t::NONE;
    }
    std::panic::catch_unwind(|| polybus_str_t {
        ptr: s,
        len: CStr::from_ptr(s).to_bytes().len(),
    })
    .unwrap_or(polybus_str_t::NONE)
}
