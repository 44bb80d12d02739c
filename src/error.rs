//! Printing an error with its causes. shmnet's error types follow the Rust
//! API guidelines: `Display` says what failed at this level and
//! [`std::error::Error::source`] gives the cause, so a chain printer (this
//! one, `anyhow`'s `{:#}`, `eyre`) shows each message once.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, joined by `": "`.
///
/// ```
/// use shmnet::error::Chain;
/// let e = shmnet::config::DeviceConfig::load("no/such/file.toml".as_ref()).unwrap_err();
/// let line = Chain(&e).to_string();
/// assert!(line.starts_with("no/such/file.toml: cannot read: "), "{line}");
/// ```
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
