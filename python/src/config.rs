//! What `connect` accepts: a URL string, a JSON string, or a mapping of the core's config fields.

use polybus::{Config, ErrorKind};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyDict, PyMapping, PyString},
};

use crate::error::{new_error, to_py};

/// Converts `config` (`"memory://"`, `'{"url": ...}'` or `{"url": ...}`) into a [`Config`].
///
/// A mapping goes through its JSON form, so the core's parser reports unknown fields and bad
/// values the same way in every language.
pub(crate) fn from_py(config: &Bound<'_, PyAny>) -> PyResult<Config> {
    let py = config.py();
    if let Ok(text) = config.cast::<PyString>() {
        return Config::parse(&text.to_cow()?).map_err(to_py);
    }
    if config.cast::<PyMapping>().is_ok() || config.cast::<PyDict>().is_ok() {
        static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let dict = PyDict::new(py);
        dict.update(config.cast::<PyMapping>()?)?;
        let text = DUMPS
            .import(py, "json", "dumps")?
            .call1((dict,))
            .map_err(|e| {
                new_error(
                    py,
                    ErrorKind::InvalidConfig,
                    format!("config is not JSON-serialisable: {e}"),
                )
            })?;
        return Config::parse(&text.extract::<String>()?).map_err(to_py);
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "config must be a URL or JSON string or a dict, not {}",
        config.get_type().name()?
    )))
}
