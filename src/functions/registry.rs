//! Function kinds the program adds: a factory registered under a kind name
//! builds the function wherever a built-in one would be built — from a
//! device or topology file (`kind = "my-fn"`), [`FunctionConfig`](super::FunctionConfig),
//! [`DeviceHandle::reconfigure`](crate::stack::DeviceHandle::reconfigure)
//! and the topology runner. The registry is per process: a program that
//! runs devices as separate processes registers its kinds in each (see
//! [`crate::topology::ChildCommand`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{ALL_BUILTIN, CustomConfig, Function, FunctionError};

/// Builds a custom function from its configuration.
pub type Factory =
    Arc<dyn Fn(&CustomConfig) -> Result<Box<dyn Function>, FunctionError> + Send + Sync>;

struct Entry {
    factory: Factory,
    /// The function has a finite job (see `FunctionConfig::has_job`).
    job: bool,
}

static REGISTRY: RwLock<BTreeMap<String, Entry>> = RwLock::new(BTreeMap::new());

/// Registers `factory` under `kind` (lower-case letters, digits and `-`,
/// not a built-in kind), so that `kind = "<kind>"` builds it. Registering
/// a kind again replaces its factory.
///
/// The factory gets the `[function]` section's other keys
/// ([`CustomConfig::params`] reads them into your config type) and returns
/// the function or an error naming what is wrong; it is also run once when
/// a configuration is read, so a bad parameter fails there, with the
/// file's name. A function that wants to keep state across configuration
/// changes implements [`Function::reconfigure`]: it receives the new
/// [`FunctionConfig::Custom`](super::FunctionConfig::Custom).
///
/// ```
/// use shmnet::functions::{register, CustomConfig, Function, FunctionConfig, FunctionKind};
///
/// struct Counter { every: u64 }
/// impl Function for Counter {
///     fn kind(&self) -> FunctionKind { FunctionKind::packet("counter") }
/// }
/// #[derive(serde::Deserialize)]
/// struct CounterConfig { every: u64 }
///
/// register("counter", |c: &CustomConfig| {
///     let p: CounterConfig = c.params()?;
///     Ok(Box::new(Counter { every: p.every }) as Box<dyn Function>)
/// })
/// .unwrap();
/// let cfg = FunctionConfig::from_toml("kind = \"counter\"\nevery = 10").unwrap();
/// assert_eq!(cfg.kind(), "counter");
/// assert!(FunctionConfig::from_toml("kind = \"counter\"\nevry = 10").is_err());
/// ```
pub fn register(
    kind: &str,
    factory: impl Fn(&CustomConfig) -> Result<Box<dyn Function>, FunctionError> + Send + Sync + 'static,
) -> Result<(), FunctionError> {
    insert(kind, Arc::new(factory), false)
}

/// [`register`] for a function with a finite job, like the built-in
/// probe: a topology run starts it after the other devices, ends when
/// every job is done ([`Function::finished`]) and fails if one failed
/// ([`Function::failed`]).
pub fn register_with_job(
    kind: &str,
    factory: impl Fn(&CustomConfig) -> Result<Box<dyn Function>, FunctionError> + Send + Sync + 'static,
) -> Result<(), FunctionError> {
    insert(kind, Arc::new(factory), true)
}

fn insert(kind: &str, factory: Factory, job: bool) -> Result<(), FunctionError> {
    let refuse = |why: &str| {
        Err(FunctionError::Register {
            kind: kind.into(),
            why: why.into(),
        })
    };
    if kind.is_empty()
        || !kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return refuse("a kind is lower-case letters, digits and `-`");
    }
    if kind == "passthrough" || ALL_BUILTIN.iter().any(|(k, _)| *k == kind) {
        return refuse("that is a built-in kind");
    }
    REGISTRY.write().insert(kind.into(), Entry { factory, job });
    Ok(())
}

/// The custom kinds registered in this process, sorted.
pub fn registered() -> Vec<String> {
    REGISTRY.read().keys().cloned().collect()
}

pub(super) fn contains(kind: &str) -> bool {
    REGISTRY.read().contains_key(kind)
}

pub(super) fn has_job(kind: &str) -> bool {
    REGISTRY.read().get(kind).is_some_and(|e| e.job)
}

/// Builds a custom function with its registered factory.
pub(super) fn build(cfg: &CustomConfig) -> Result<Box<dyn Function>, FunctionError> {
    // The factory runs without the lock: it may itself look things up.
    let factory = REGISTRY
        .read()
        .get(&cfg.kind)
        .map(|e| Arc::clone(&e.factory));
    match factory {
        Some(f) => f(cfg),
        None => Err(FunctionError::Unknown {
            kind: cfg.kind.clone(),
            why: super::unknown_kind(&cfg.kind),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::{FunctionConfig, Passthrough};

    #[test]
    fn names_are_checked_and_built_ins_are_not_replaced() {
        let f = |_: &CustomConfig| Ok(Box::new(Passthrough) as Box<dyn Function>);
        assert!(register("Bad Name", f).is_err());
        assert!(register("", f).is_err());
        assert!(register("passthrough", f).is_err());
        assert!(register("firewall", f).is_err());
        register("registry-test", f).unwrap();
        assert!(registered().contains(&"registry-test".to_string()));
        let built =
            crate::functions::build(&FunctionConfig::Custom(CustomConfig::new("registry-test")))
                .unwrap();
        assert_eq!(built.name(), "passthrough");
        let unknown = crate::functions::build(&FunctionConfig::Custom(CustomConfig::new("nope")));
        let msg = unknown.err().unwrap().to_string();
        assert!(msg.contains("nope") && msg.contains("known kinds"), "{msg}");
    }
}
