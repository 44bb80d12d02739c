//! Counter sets, defined once.
//!
//! [`counter_set!`](crate::counters::counter_set) turns one list of counter
//! names into the two structs every layer needs: the atomic counters the data
//! path bumps (readable from any thread), and a plain snapshot with the same
//! field names, whose `pairs()` is the `(name, value)` table that stats
//! printing, metrics and policies read. Nothing copies counters field by
//! field: adding a counter is one line.
//!
//! ```
//! // `AdapterCounters` / `AdapterStats` are one such set.
//! use shmnet::adapters::{AdapterCounters, AdapterStats};
//! use std::sync::atomic::Ordering;
//! let c = AdapterCounters::default();
//! c.rx_frames.fetch_add(2, Ordering::Relaxed);
//! let s: AdapterStats = c.snapshot();
//! assert_eq!(s.rx_frames, 2);
//! assert_eq!(s.pairs()[0], ("rx_frames", 2));
//! assert_eq!(AdapterStats::NAMES.len(), s.pairs().len());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// Defines `$atomic` (one `AtomicU64` per name, `snapshot()`) and `$snap`
/// (one `u64` per name, `NAMES`, `pairs()`).
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        pub struct $atomic:ident => $snap:ident {
            $( $(#[$fmeta:meta])* $field:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $atomic {
            $( $(#[$fmeta])* pub $field: ::std::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("A snapshot of `", stringify!($atomic), "`: the same fields, as values.")]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snap {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $atomic {
            /// The current values.
            pub fn snapshot(&self) -> $snap {
                $snap {
                    $( $field: self.$field.load(::std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        // Not every set is printed (some only feed others' tables).
        #[allow(dead_code)]
        impl $snap {
            /// The counters' names, in table order.
            pub const NAMES: [&'static str; <[&str]>::len(&[$(stringify!($field)),*])] =
                [$(stringify!($field)),*];

            /// `(name, value)` of every counter, in table order.
            pub fn pairs(&self) -> [(&'static str, u64); Self::NAMES.len()] {
                [$((stringify!($field), self.$field)),*]
            }
        }
    };
}
pub(crate) use counter_set;

/// Adds to a counter that only this thread writes: a plain load and store
/// instead of a locked read-modify-write on the per-frame path.
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    counter_set! {
        /// Two counters.
        pub struct Pair => PairStats {
            /// First.
            first,
            second,
        }
    }

    #[test]
    fn snapshot_and_pairs_follow_the_definition() {
        let c = Pair::default();
        bump(&c.first, 2);
        bump(&c.second, 5);
        bump(&c.first, 1);
        let s = c.snapshot();
        assert_eq!((s.first, s.second), (3, 5));
        assert_eq!(PairStats::NAMES, ["first", "second"]);
        assert_eq!(s.pairs(), [("first", 3), ("second", 5)]);
    }
}
