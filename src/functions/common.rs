//! The glue every function writes the same way: its counter table (the
//! crate's `counters!` macro), the names of a
//! rule's, class's or peer's counters ([`counter_names`]), config errors
//! ([`invalid`]) and applying a changed config in place
//! ([`reconfigure_in_place`]).
//!
//! ```
//! use shmnet::functions::common::counter_names;
//! let names = counter_names("next_hop", "a", ["packets", "up"]);
//! assert_eq!(names, ["next_hop.a.packets", "next_hop.a.up"]);
//! ```

use super::{FunctionConfig, FunctionError, KindConfig};
use crate::stack::FunctionSpec;

/// Declares a struct of `u64` counters, as written, and gives it a
/// `visit` method that visits every field by its name, in declaration
/// order: the counter names a function reports from
/// [`Function::counters`](crate::functions::Function::counters).
#[allow(unused_macros)] // unused when the functions using it are compiled out
macro_rules! counters {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_attr:meta])* $field_vis:vis $field:ident: u64,)*
        }
    ) => {
        $(#[$attr])*
        $vis struct $name {
            $($(#[$field_attr])* $field_vis $field: u64,)*
        }

        impl $name {
            /// Visits each counter by its field name, in declaration order.
            pub fn visit(&self, visit: &mut dyn FnMut(&str, u64)) {
                $(visit(stringify!($field), self.$field);)*
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use counters;

/// Declares a config section struct as written (its own fields end with a
/// comma), with the `[extra]` fields after its own: how
/// `with_match_fields!` and `with_health_fields!` add a shared fragment to
/// the sections that need it. serde's `flatten` would do it but does not
/// go with `deny_unknown_fields`, and each section must refuse unknown
/// fields.
#[allow(unused_macros)] // unused when the functions using it are compiled out
macro_rules! struct_with_fields {
    (
        [$($extra:tt)*]
        $(#[$attr:meta])*
        pub struct $name:ident { $($own:tt)* }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($own)*
            $($extra)*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use struct_with_fields;

/// `{kind}.{name}.{counter}` for each of `counters`: the counter names of
/// one rule, class or peer, built once so that visiting them allocates
/// nothing.
pub fn counter_names<const N: usize>(kind: &str, name: &str, counters: [&str; N]) -> [String; N] {
    counters.map(|c| format!("{kind}.{name}.{c}"))
}

/// The error of an invalid config of function `kind`, for `map_err`.
pub fn invalid(kind: &'static str) -> impl Fn(String) -> FunctionError + Copy {
    move |why| FunctionError::Invalid { kind, why }
}

/// [`Function::reconfigure`](crate::functions::Function::reconfigure) for
/// a function that applies a config of its own kind in place with
/// `apply`: `Ok(true)` once applied, `Ok(false)` for a config of another
/// kind (the device then builds a new function), `apply`'s error for an
/// invalid one.
pub fn reconfigure_in_place<C: KindConfig>(
    cfg: &dyn FunctionSpec,
    apply: impl FnOnce(&C) -> Result<(), FunctionError>,
) -> Result<bool, FunctionError> {
    match cfg.downcast_ref::<FunctionConfig>().and_then(C::of) {
        Some(c) => apply(c).map(|()| true),
        None => Ok(false),
    }
}

/// serde field defaults by value, so that a field's default stands next to
/// it: `#[serde(default = "defaults::u32::<64>")]`. (A section whose every
/// field has a default uses `#[serde(default)]` and its `Default` impl
/// instead.)
pub mod defaults {
    use super::super::matching::ConfigDuration;

    /// The default `N`, for a `u32` field.
    pub fn u32<const N: u32>() -> u32 {
        N
    }
    /// The default `B`, for a `bool` field.
    pub fn bool<const B: bool>() -> bool {
        B
    }
    /// The default of `S` seconds, for a duration field.
    pub fn secs<const S: u64>() -> ConfigDuration {
        ConfigDuration::from_secs(S)
    }
    /// The default of `MS` milliseconds, for a duration field.
    pub fn millis<const MS: u64>() -> ConfigDuration {
        ConfigDuration::from_millis(MS)
    }
}
