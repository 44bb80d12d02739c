//! The policy engine: rules over metrics that change devices' functions.
