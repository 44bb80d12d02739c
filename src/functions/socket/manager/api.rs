//! The JSON API: requests parsed from HTTP method and target.
