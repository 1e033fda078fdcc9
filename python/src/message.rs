//! Building core messages from what Python callers pass to `publish` and `publish_many`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use polybus::{ErrorKind, Headers, Message};
use pyo3::{
    exceptions::PyTypeError,
    intern,
    prelude::*,
    sync::PyOnceLock,
    types::{
        PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyMemoryView, PyString, PyTuple,
    },
};

use crate::error::new_error;

/// The optional parts of a message, as `publish` takes them by keyword.
#[derive(Default)]
pub(crate) struct Meta {
    pub(crate) key: Option<String>,
    pub(crate) headers: Option<Headers>,
    pub(crate) id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) time: Option<SystemTime>,
}

/// Builds a message: bytes, bytearray and memoryview payloads are sent as they are, `str` as
/// UTF-8, and any other value as its compact JSON encoding (`json.dumps` with
/// `separators=(",", ":")`, the text Go's `json.Marshal` and JS `JSON.stringify` give plain
/// values), marked by the core's one JSON rule ([`Message::json_encoded`]: `content-type:
/// application/json` unless a `content-type` header is set).
pub(crate) fn build(topic: String, payload: &Bound<'_, PyAny>, meta: Meta) -> PyResult<Message> {
    let (bytes, json) = payload_bytes(payload)?;
    let mut message = Message::new(topic, bytes);
    if let Some(key) = meta.key {
        message = message.key(key);
    }
    if let Some(headers) = meta.headers {
        message = message.headers(headers);
    }
    if json {
        message = message.json_encoded();
    }
    if let Some(id) = meta.id {
        message = message.id(id);
    }
    if let Some(t) = meta.event_type {
        message = message.event_type(t);
    }
    if let Some(time) = meta.time {
        message = message.time(time);
    }
    Ok(message)
}

/// The event time a publisher set: a `datetime.datetime` (a naive one is taken as UTC) or
/// seconds since the Unix epoch as a float or int (as `time.time()` gives them). Datetimes keep
/// their microseconds exactly.
///
/// Raises `TypeError` for any other type and `InvalidArgumentError` for a time before 1970
/// (or a float that is not finite).
pub(crate) fn event_time(value: &Bound<'_, PyAny>) -> PyResult<SystemTime> {
    static DATETIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static TIMEZONE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static TIMEGM: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = value.py();
    let before_1970 = || {
        new_error(
            py,
            ErrorKind::InvalidArgument,
            format!("time {value} is before 1970"),
        )
    };
    if value.is_instance(DATETIME.import(py, "datetime", "datetime")?)? {
        let utc = if value.call_method0(intern!(py, "utcoffset"))?.is_none() {
            value.clone()
        } else {
            let utc = TIMEZONE
                .import(py, "datetime", "timezone")?
                .getattr(intern!(py, "utc"))?;
            value.call_method1(intern!(py, "astimezone"), (utc,))?
        };
        // Whole seconds and microseconds as integers, so no float rounds them.
        let fields = utc.call_method0(intern!(py, "timetuple"))?;
        let seconds: i64 = TIMEGM
            .import(py, "calendar", "timegm")?
            .call1((fields,))?
            .extract()?;
        let micros: u64 = utc.getattr(intern!(py, "microsecond"))?.extract()?;
        let seconds = u64::try_from(seconds).map_err(|_| before_1970())?;
        return Ok(UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros));
    }
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>())
    {
        return Err(PyTypeError::new_err(format!(
            "time must be a datetime or seconds since the Unix epoch (float), not {}",
            value.get_type().name()?
        )));
    }
    let seconds: f64 = value.extract()?;
    if seconds.is_nan() {
        return Err(new_error(py, ErrorKind::InvalidArgument, "time is NaN"));
    }
    if seconds < 0.0 {
        return Err(before_1970());
    }
    Duration::try_from_secs_f64(seconds)
        .map(|d| UNIX_EPOCH + d)
        .map_err(|_| {
            new_error(
                py,
                ErrorKind::InvalidArgument,
                format!("time {value} is out of range"),
            )
        })
}

/// Builds the messages of `publish_batch`, all of them before any is published. An item that
/// cannot be converted raises its error with the item's index in the message and
/// `published = 0`.
pub(crate) fn from_items(items: &Bound<'_, PyAny>) -> PyResult<Vec<Message>> {
    let py = items.py();
    let mut messages = Vec::with_capacity(items.len().unwrap_or(0));
    for (i, item) in items.try_iter()?.enumerate() {
        match item.and_then(|item| from_item(&item)) {
            Ok(m) => messages.push(m),
            Err(err) => {
                let value = err.value(py);
                let text = value.str().map(|s| s.to_string()).unwrap_or_default();
                let at = format!("event {i} of the batch: ");
                // As the core words a batch error: "kind: event i of the batch: detail".
                let text = match crate::error::kind_of(value) {
                    Some(kind) => match text.strip_prefix(kind.description()) {
                        Some(rest) => {
                            let rest = rest.strip_prefix(": ").unwrap_or(rest);
                            format!("{}: {at}{rest}", kind.description())
                        }
                        None => format!("{at}{text}"),
                    },
                    None => format!("{at}{text}"),
                };
                let _ = value.setattr("args", (text,));
                let _ = value.setattr("published", 0);
                return Err(err);
            }
        }
    }
    Ok(messages)
}

/// Builds a message from one item of `publish_batch`: a `(topic, payload)` pair or a dict with
/// `topic`, `payload` and optionally `key`, `headers`, `id`, `type` and `time`.
pub(crate) fn from_item<'py>(item: &Bound<'py, PyAny>) -> PyResult<Message> {
    let py = item.py();
    if let Ok(pair) = item.cast::<PyTuple>() {
        let (topic, payload): (String, Bound<'_, PyAny>) = pair.extract()?;
        return build(topic, &payload, Meta::default());
    }
    if let Ok(dict) = item.cast::<PyDict>() {
        let get = |name: &Bound<'py, PyString>| dict.get_item(name);
        let topic: String = match get(intern!(py, "topic"))? {
            Some(t) => t.extract()?,
            None => return Err(pyo3::exceptions::PyKeyError::new_err("topic")),
        };
        let payload = get(intern!(py, "payload"))?.unwrap_or_else(|| py.None().into_bound(py));
        let opt = |name: &Bound<'py, PyString>| -> PyResult<Option<String>> {
            match get(name)? {
                Some(v) if !v.is_none() => Ok(Some(v.extract()?)),
                _ => Ok(None),
            }
        };
        let headers = match get(intern!(py, "headers"))? {
            Some(h) if !h.is_none() => Some(h.extract()?),
            _ => None,
        };
        let time = match get(intern!(py, "time"))? {
            Some(t) if !t.is_none() => Some(event_time(&t)?),
            _ => None,
        };
        let meta = Meta {
            key: opt(intern!(py, "key"))?,
            headers,
            id: opt(intern!(py, "id"))?,
            event_type: opt(intern!(py, "type"))?,
            time,
        };
        return build(topic, &payload, meta);
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "publish_batch takes (topic, payload) tuples or dicts, not {}",
        item.get_type().name()?
    )))
}

/// The bytes of a payload, and whether they are the JSON encoding of a value.
fn payload_bytes(payload: &Bound<'_, PyAny>) -> PyResult<(Bytes, bool)> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok((Bytes::copy_from_slice(b.as_bytes()), false));
    }
    if let Ok(s) = payload.cast::<PyString>() {
        return Ok((Bytes::copy_from_slice(s.to_cow()?.as_bytes()), false));
    }
    if let Ok(b) = payload.cast::<PyByteArray>() {
        return Ok((Bytes::from(b.to_vec()), false));
    }
    let py = payload.py();
    if payload.cast::<PyMemoryView>().is_ok() {
        let b = payload.call_method0(intern!(py, "tobytes"))?;
        return Ok((
            Bytes::copy_from_slice(b.cast::<PyBytes>()?.as_bytes()),
            false,
        ));
    }
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let dumps = DUMPS.import(py, "json", "dumps")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("separators", (",", ":"))?;
    kwargs.set_item("ensure_ascii", false)?;
    kwargs.set_item("allow_nan", false)?;
    let text = dumps.call((payload,), Some(&kwargs)).map_err(|cause| {
        let err = new_error(
            py,
            ErrorKind::Payload,
            format!(
                "payload of type {} is not bytes, str or a JSON-encodable value: {cause}",
                payload
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ),
        );
        err.set_cause(py, Some(cause));
        err
    })?;
    let text = text.cast_into::<PyString>()?;
    Ok((Bytes::copy_from_slice(text.to_cow()?.as_bytes()), true))
}
